//! Virtual IP allocation: one address per service from `--vip-cidr`.
//!
//! The allocator only decides which address is free; the registry persists
//! the choice (in the same store transaction as the registration that
//! created the service), so a VIP is stable for the service's whole life and
//! survives restarts.

pub use crate::model::Ipv4Cidr as VipCidr;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The CIDR has no free host address left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no free VIP left in {cidr}: all {capacity} host addresses are allocated; widen --vip-cidr"
)]
pub struct VipExhausted {
    pub cidr: VipCidr,
    pub capacity: u64,
}

/// Hands out unused host addresses of one CIDR.
#[derive(Debug)]
pub struct VipAllocator {
    cidr: VipCidr,
    /// Addresses already owned by a service (restored from the store).
    used: HashSet<Ipv4Addr>,
    /// Where the next search starts, so allocation stays O(1) on average
    /// instead of rescanning the low addresses every time.
    cursor: u32,
}

// === impl VipAllocator ===

impl VipAllocator {
    pub fn new(cidr: VipCidr) -> Self {
        VipAllocator {
            cidr,
            used: HashSet::new(),
            cursor: cidr.first().wrapping_add(1),
        }
    }

    pub fn cidr(&self) -> VipCidr {
        self.cidr
    }

    /// Marks an address as owned (a VIP loaded from the store). Addresses
    /// outside the CIDR are kept by their services but cannot collide.
    pub fn mark_used(&mut self, ip: Ipv4Addr) {
        self.used.insert(ip);
    }

    /// The next free address, without taking it: the caller persists it
    /// first and then calls [`VipAllocator::mark_used`].
    pub fn next_free(&self) -> Result<Ipv4Addr, VipExhausted> {
        let (lo, hi) = (self.cidr.first(), self.cidr.last());
        let capacity = self.cidr.capacity();
        let in_hosts = |a: u32| a > lo && a < hi;
        let mut candidate = if in_hosts(self.cursor) {
            self.cursor
        } else {
            lo.wrapping_add(1)
        };
        // At most one lap of the host range (capacity is 0 for /31 and /32).
        for _ in 0..capacity {
            let ip = Ipv4Addr::from(candidate);
            if !self.used.contains(&ip) {
                return Ok(ip);
            }
            candidate = if in_hosts(candidate + 1) {
                candidate + 1
            } else {
                lo + 1
            };
        }
        Err(VipExhausted {
            cidr: self.cidr,
            capacity,
        })
    }

    /// Takes `ip` and moves the search cursor past it.
    pub fn take(&mut self, ip: Ipv4Addr) {
        self.used.insert(ip);
        if self.cidr.contains(ip) {
            self.cursor = u32::from(ip).wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(a: &mut VipAllocator) -> Result<Ipv4Addr, VipExhausted> {
        let ip = a.next_free()?;
        a.take(ip);
        Ok(ip)
    }

    #[test]
    fn parses_and_rejects() {
        let c = VipCidr::network("127.100.0.0/16").unwrap();
        assert_eq!(c, VipCidr::DEFAULT_VIPS);
        assert_eq!(c.capacity(), 65534);
        assert_eq!(c.to_string(), "127.100.0.0/16");
        assert!(c.contains("127.100.255.255".parse().unwrap()));
        assert!(!c.contains("127.101.0.0".parse().unwrap()));
        let err = VipCidr::network("127.100.0.1/16").unwrap_err();
        assert!(err.contains("did you mean 127.100.0.0/16"), "{err}");
        for bad in ["127.100.0.0", "x/16", "127.0.0.0/33", "::1/128"] {
            assert!(VipCidr::network(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn skips_network_and_broadcast_and_exhausts_clearly() {
        let mut a = VipAllocator::new("10.9.0.0/30".parse().unwrap());
        let got = [alloc(&mut a).unwrap(), alloc(&mut a).unwrap()];
        assert_eq!(
            got,
            [
                "10.9.0.1".parse::<Ipv4Addr>().unwrap(),
                "10.9.0.2".parse().unwrap()
            ]
        );
        let err = alloc(&mut a).unwrap_err();
        assert_eq!(err.capacity, 2);
        assert!(
            err.to_string().contains("no free VIP left in 10.9.0.0/30"),
            "{err}"
        );
        // /31 and /32 have no host addresses once network and broadcast are skipped.
        assert!(VipAllocator::new("10.9.0.0/31".parse().unwrap())
            .next_free()
            .is_err());
        assert!(VipAllocator::new("10.9.0.0/32".parse().unwrap())
            .next_free()
            .is_err());
    }

    #[test]
    fn no_duplicates_and_respects_restored_addresses() {
        let mut a = VipAllocator::new("10.9.0.0/28".parse().unwrap());
        a.mark_used("10.9.0.1".parse().unwrap());
        a.mark_used("10.9.0.3".parse().unwrap());
        let mut seen = HashSet::new();
        while let Ok(ip) = alloc(&mut a) {
            assert!(seen.insert(ip), "{ip} handed out twice");
            assert!(ip != "10.9.0.1".parse::<Ipv4Addr>().unwrap());
            assert!(ip != "10.9.0.3".parse::<Ipv4Addr>().unwrap());
        }
        assert_eq!(seen.len(), 14 - 2);
    }
}
