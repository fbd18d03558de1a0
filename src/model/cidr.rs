//! IPv4 networks in CIDR notation, for flags (`--vip-cidr`,
//! `--exclude-cidrs`) shared by the proxy, `init` and the control plane.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network in CIDR notation, normalised to its network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// First address of the network (host bits cleared).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

// === impl Ipv4Cidr ===

impl Ipv4Cidr {
    /// `127.100.0.0/16`, where VIPs live: loopback space, so a packet to a
    /// VIP never leaves the host even when interception is missing.
    pub const DEFAULT_VIPS: Ipv4Cidr = Ipv4Cidr {
        addr: Ipv4Addr::new(127, 100, 0, 0),
        prefix: 16,
    };

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// A network written exactly (`--vip-cidr`): `ADDR/PREFIX` with no
    /// host bits set, where a typo must not silently pick another range.
    pub fn network(s: &str) -> Result<Self, String> {
        if !s.contains('/') {
            return Err(format!("{s:?} is not a CIDR like 127.100.0.0/16"));
        }
        let cidr: Ipv4Cidr = s.parse()?;
        let given = s
            .trim()
            .split_once('/')
            .map(|(ip, _)| ip.parse::<Ipv4Addr>());
        match given {
            Some(Ok(ip)) if ip != cidr.addr => {
                Err(format!("{s} has host bits set; did you mean {cidr}?"))
            }
            _ => Ok(cidr),
        }
    }

    /// The network address, as a number.
    pub fn first(self) -> u32 {
        u32::from(self.addr)
    }

    /// The broadcast address, as a number.
    pub fn last(self) -> u32 {
        self.first() | !mask(self.prefix)
    }

    /// Host addresses: all but network and broadcast.
    pub fn capacity(self) -> u64 {
        (u64::from(self.last()) - u64::from(self.first()) + 1).saturating_sub(2)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.contains(':') {
            return Err("IPv6 is not supported yet".into());
        }
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, prefix)) => (ip, prefix),
            None => (s, "32"),
        };
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix length {prefix:?} is not in 0..=32"))?;
        let addr = Ipv4Addr::from(u32::from(ip) & mask(prefix));
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
