use super::*;
use clap::{Args, Command, FromArgMatches};

/// Parses `mesh-proxy init` flags the way the binary will.
fn parse(flags: &[&str]) -> Result<InitArgs, clap::Error> {
    let cmd = InitArgs::augment_args(Command::new("init").no_binary_name(true));
    InitArgs::from_arg_matches(&cmd.try_get_matches_from(flags)?)
}

/// Rules as lines without the common `-t nat -A MESH_OUTPUT` prefix.
fn lines(args: &InitArgs) -> Vec<String> {
    rules(args)
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r[..4], ["-t", "nat", "-A", CHAIN]);
            r[4..].join(" ")
        })
        .collect()
}

#[test]
fn default_rules() {
    let args = parse(&[]).unwrap();
    assert_eq!(
        lines(&args),
        [
            "-m mark --mark 0x4d45 -j RETURN",
            "-p udp --dport 53 -j REDIRECT --to-ports 15053",
            "-p tcp --dport 53 -j REDIRECT --to-ports 15053",
            "-p tcp -d 127.100.0.0/16 -j REDIRECT --to-ports 15001",
            "-d 127.0.0.0/8 -j RETURN",
            "-o lo -j RETURN",
            "-p tcp -j REDIRECT --to-ports 15001",
        ]
    );
}

#[test]
fn uid_mode_and_exclusions() {
    let args = parse(&[
        "--uid",
        "1337",
        "--outbound",
        "127.0.0.1:16001",
        "--dns",
        "0.0.0.0:16053",
        "--vip-cidr",
        "10.96.0.0/12",
        "--exclude-ports",
        "22,2379",
        "--exclude-cidrs",
        "10.0.0.0/8,192.168.1.7",
    ])
    .unwrap();
    assert_eq!(
        lines(&args),
        [
            "-m owner --uid-owner 1337 -j RETURN",
            "-p udp --dport 53 -j REDIRECT --to-ports 16053",
            "-p tcp --dport 53 -j REDIRECT --to-ports 16053",
            "-d 10.0.0.0/8 -j RETURN",
            "-d 192.168.1.7/32 -j RETURN",
            "-p tcp --dport 22 -j RETURN",
            "-p tcp --dport 2379 -j RETURN",
            "-p tcp -d 10.96.0.0/12 -j REDIRECT --to-ports 16001",
            "-d 127.0.0.0/8 -j RETURN",
            "-o lo -j RETURN",
            "-p tcp -j REDIRECT --to-ports 16001",
        ]
    );
}

/// Inbound rules as lines without the common `-t nat -A MESH_INBOUND` prefix.
fn inbound_lines(args: &InitArgs) -> Vec<String> {
    inbound_rules(args)
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r[..4], ["-t", "nat", "-A", INBOUND_CHAIN]);
            r[4..].join(" ")
        })
        .collect()
}

#[test]
fn no_inbound_rules_without_app_ports() {
    let args = parse(&[]).unwrap();
    assert!(args.app_ports.is_empty());
    assert_eq!(args.inbound_port, 15006);
    assert!(inbound_lines(&args).is_empty());
}

#[test]
fn inbound_redirects_each_app_port() {
    let args = parse(&["--app-port", "8000,8443"]).unwrap();
    assert_eq!(
        inbound_lines(&args),
        [
            "-p tcp --dport 8000 -j REDIRECT --to-ports 15006",
            "-p tcp --dport 8443 -j REDIRECT --to-ports 15006",
        ]
    );
    // The outbound chain is the same with or without app ports.
    assert_eq!(lines(&args), lines(&parse(&[]).unwrap()));

    let args = parse(&["--app-port", "9000", "--inbound-port", "0.0.0.0:16006"]).unwrap();
    assert_eq!(
        inbound_lines(&args),
        ["-p tcp --dport 9000 -j REDIRECT --to-ports 16006"]
    );
    let args = parse(&["--app-port", "7000", "--app-port", "7001"]).unwrap();
    assert_eq!(args.app_ports, [7000, 7001]);
    assert_eq!(
        INBOUND_HOOK.jump("-A").join(" "),
        "-t nat -A PREROUTING -p tcp -j MESH_INBOUND"
    );
    assert_eq!(
        OUTBOUND_HOOK.jump("-D").join(" "),
        "-t nat -D OUTPUT -j MESH_OUTPUT"
    );
}

#[test]
fn inbound_flags_are_checked() {
    for (flags, flag) in [
        (&["--app-port", "0"][..], "--app-port"),
        (&["--app-port", "8000,x"][..], "--app-port"),
        (&["--app-port", "70000"][..], "--app-port"),
        (&["--inbound", "0"][..], "--inbound"),
        (&["--inbound-port", "banana"][..], "--inbound"),
    ] {
        let err = parse(flags).expect_err(flags[1]).to_string();
        assert!(err.contains(flag), "{flags:?}: {err}");
    }
    for (flags, flag) in [
        (&["--app-port", "8000,8000"][..], "--app-port"),
        (&["--app-port", "15006"][..], "--app-port"),
        (&["--app-port", "80", "--inbound", "15001"][..], "--inbound"),
        (
            &["--app-port", "80", "--inbound-port", "15053"][..],
            "--inbound",
        ),
    ] {
        let args = parse(flags).unwrap();
        let err = inbound_rules(&args).unwrap_err().to_string();
        assert!(err.contains(flag), "{flags:?}: {err}");
        // install validates both chains before touching iptables.
        assert!(rules(&args).is_err(), "{flags:?}");
    }
    // Without app ports the inbound port is unused, so it is not checked.
    let args = parse(&["--inbound", "15001"]).unwrap();
    assert!(inbound_rules(&args).unwrap().is_empty());
}

#[test]
fn inbound_flags_read_the_environment() {
    let mut cmd = InitArgs::augment_args(Command::new("init"));
    let help = cmd.render_long_help().to_string();
    for env in ["MESH_APP_PORT", "MESH_INBOUND"] {
        assert!(
            help.contains(&format!("env: {env}")),
            "{env} missing:\n{help}"
        );
    }
}

#[test]
fn mark_accepts_hex_and_decimal() {
    assert_eq!(parse(&["--mark", "0x10"]).unwrap().mark, 16);
    assert_eq!(parse(&["--mark", "19781"]).unwrap().mark, 0x4d45);
    assert_eq!(
        lines(&parse(&["--mark", "16"]).unwrap())[0],
        "-m mark --mark 0x10 -j RETURN"
    );
    assert!(parse(&["--mark", "0xzz"]).is_err());
    assert!(
        parse(&["--mark", "1", "--uid", "0"]).is_err(),
        "mark and uid conflict"
    );
}

#[test]
fn bad_flags_name_the_flag() {
    for (flags, flag) in [
        (&["--vip-cidr", "10.0.0.0/33"][..], "--vip-cidr"),
        (&["--vip-cidr", "fd00::/8"][..], "--vip-cidr"),
        (
            &["--exclude-cidrs", "10.0.0.0/8,banana"][..],
            "--exclude-cidrs",
        ),
        (&["--exclude-ports", "22,70000"][..], "--exclude-ports"),
        (&["--exclude-ports", "0"][..], "--exclude-ports"),
        (&["--outbound", "localhost:x"][..], "--outbound"),
        (&["--dns", "0"][..], "--dns"),
    ] {
        let err = parse(flags).expect_err(flags[1]).to_string();
        assert!(err.contains(flag), "{flags:?}: {err}");
    }
}

#[test]
fn rules_reject_unusable_values() {
    let mut args = parse(&[]).unwrap();
    args.mark = 0;
    let err = rules(&args).unwrap_err().to_string();
    assert!(err.contains("--mark"), "{err}");
    args.uid = Some(1000);
    assert!(rules(&args).is_ok(), "mark is unused in uid mode");

    let mut args = parse(&[]).unwrap();
    args.dns = args.outbound;
    assert!(rules(&args).unwrap_err().to_string().contains("--dns"));
    let mut args = parse(&[]).unwrap();
    args.outbound = 0;
    assert!(rules(&args).unwrap_err().to_string().contains("--outbound"));
}

#[test]
fn cidr_parsing() {
    let c: Ipv4Cidr = "10.1.2.3/8".parse().unwrap();
    assert_eq!(c.to_string(), "10.0.0.0/8");
    assert!(c.contains("10.255.0.1".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("203.0.113.9".parse().unwrap()));
    assert!("1.2.3.4/".parse::<Ipv4Cidr>().is_err());
}

#[test]
fn iptables_command_line() {
    let mut args = parse(&["--iptables", "iptables-legacy"]).unwrap();
    let ipt = Iptables::new(&args);
    assert_eq!(
        ipt.command_line(&["-t", "nat", "-S"]).join(" "),
        "iptables-legacy -w -t nat -S"
    );
    args.netns = Some("ns1".into());
    let ipt = Iptables::new(&args);
    assert_eq!(
        ipt.command_line(&["-t", "nat", "-S"]).join(" "),
        "ip netns exec ns1 iptables-legacy -w -t nat -S"
    );
}

#[test]
fn missing_binary_is_a_clear_error() {
    let mut args = parse(&[]).unwrap();
    args.iptables = "mesh-no-such-iptables".into();
    let err = install(&args).unwrap_err().to_string();
    assert!(err.contains("cannot run mesh-no-such-iptables"), "{err}");
}
