//! The SSRF guard's address table and allow list, through the public `Guard::check_ip`.

use std::net::IpAddr;

use stead_tools_http::{Guard, GuardConfig};

fn guard(allow: &[&str]) -> Guard {
    Guard::new(GuardConfig { allow: allow.iter().map(|s| (*s).to_owned()).collect(), allow_all: false }).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every refused range, with a word the reason must contain.
const REFUSED: &[(&str, &str)] = &[
    // IPv4
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("100.100.100.200", "cloud metadata"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.0.1", "link-local"),
    ("169.254.169.254", "link-local (cloud metadata)"),
    ("169.254.170.2", "cloud metadata"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.1", "IETF protocol assignments"),
    ("192.0.0.192", "IETF protocol assignments"),
    ("192.0.2.1", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    // IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, which is loopback"),
    ("::ffff:7f00:1", "IPv4-mapped form of 127.0.0.1"),
    ("::ffff:10.1.2.3", "IPv4-mapped form of 10.1.2.3, which is private"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1, which is loopback"),
    ("::8.8.8.8", "IPv4-compatible form of 8.8.8.8 (deprecated"),
    ("64:ff9b::127.0.0.1", "NAT64 form of 127.0.0.1, which is loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254, which is link-local (cloud metadata)"),
    ("64:ff9b::192.168.0.1", "NAT64 form of 192.168.0.1"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("100::1", "discard-only"),
    ("fc00::1", "unique local"),
    ("fdff:ffff::1", "unique local"),
    ("fd00:ec2::254", "unique local (cloud metadata)"),
    ("fe80::1", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001::1", "Teredo"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "ORCHID"),
    ("2001:20::1", "ORCHIDv2"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2002:7f00:1::", "6to4 form of 127.0.0.1, which is loopback"),
    ("2002:a9fe:a9fe::1", "6to4 form of 169.254.169.254"),
    ("4000::1", "outside global unicast"),
    ("5f00::1", "outside global unicast"),
    ("1::1", "outside global unicast"),
];

const ALLOWED: &[&str] = &[
    "1.1.1.1",
    "8.8.8.8",
    "93.184.216.34",
    "100.63.255.255",  // just below 100.64/10
    "100.128.0.0",     // just above it
    "172.15.255.255",  // just below 172.16/12
    "172.32.0.0",      // just above it
    "169.253.255.255", // just below 169.254/16
    "192.0.1.1",
    "192.169.0.1",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2a00:1450:4001::200e",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",   // mapped, public inside
    "64:ff9b::808:808", // NAT64 of 8.8.8.8
    "2002:808:808::1",  // 6to4 of 8.8.8.8
    "2001:db9::1",      // just past documentation
];

#[test]
fn refused_ranges_are_refused_with_a_reason() {
    let g = guard(&[]);
    for (addr, why) in REFUSED {
        let denied = g.check_ip(ip(addr)).expect_err(addr);
        assert_eq!(denied.ip, ip(addr));
        assert!(denied.reason.contains(why), "{addr}: {:?} does not mention {why:?}", denied.reason);
        let text = denied.to_string();
        assert!(text.starts_with(&format!("refused: {} is ", ip(addr))), "{text}");
        assert!(text.contains("allow it with `allow: ["), "{text}");
    }
}

#[test]
fn public_addresses_pass() {
    let g = guard(&[]);
    for addr in ALLOWED {
        assert_eq!(g.check_ip(ip(addr)), Ok(()), "{addr}");
    }
}

#[test]
fn the_metadata_message_says_what_and_how() {
    let text = guard(&[]).check_ip(ip("169.254.169.254")).unwrap_err().to_string();
    assert_eq!(
        text,
        "refused: 169.254.169.254 is link-local (cloud metadata); allow it with `allow: [\"169.254.169.254/32\"]` in the HTTP tool guard settings"
    );
    let text = guard(&[]).check_ip(ip("::1")).unwrap_err().to_string();
    assert!(text.contains("`allow: [\"::1/128\"]`"), "{text}");
}

#[test]
fn allow_entries_open_exactly_their_ranges() {
    let g = guard(&["10.0.0.0/8", "127.0.0.1/32", "::1/128", "192.168.1.5"]);
    for addr in ["10.0.0.1", "10.200.3.4", "127.0.0.1", "::1", "192.168.1.5", "::ffff:127.0.0.1", "::ffff:10.9.9.9"] {
        assert_eq!(g.check_ip(ip(addr)), Ok(()), "{addr}");
    }
    for addr in ["127.0.0.2", "11.0.0.0", "192.168.1.6", "169.254.169.254", "fe80::1", "172.16.0.1"] {
        let public = ["11.0.0.0"];
        assert_eq!(g.check_ip(ip(addr)).is_ok(), public.contains(&addr), "{addr}");
    }
    // A mapped allow entry admits the plain IPv4 form's mapped twin, and a v6 net its members.
    let g = guard(&["fd00::/8", "::ffff:192.168.0.0/112"]);
    assert_eq!(g.check_ip(ip("fd12::1")), Ok(()));
    assert_eq!(g.check_ip(ip("::ffff:192.168.3.4")), Ok(()));
    assert!(g.check_ip(ip("fc00::1")).is_err());
}

#[test]
fn allow_all_turns_the_guard_off() {
    let g = Guard::new(GuardConfig { allow: vec![], allow_all: true }).unwrap();
    for (addr, _) in REFUSED {
        assert_eq!(g.check_ip(ip(addr)), Ok(()), "{addr}");
    }
}

#[test]
fn bad_allow_entries_are_refused_with_a_reason() {
    let cases = [
        ("10.0.0.1/8", "did you mean `10.0.0.0/8`"),
        ("10.0.0.0/33", "prefix length must be 0 to 32"),
        ("::1/129", "prefix length must be 0 to 128"),
        ("10.0.0.0/x", "prefix length"),
        ("not a host", "neither a CIDR"),
        ("", "neither a CIDR"),
        ("http://api.internal", "neither a CIDR"),
        ("-bad.example", "neither a CIDR"),
        ("10.0.0/8", "neither a CIDR"),
    ];
    for (entry, want) in cases {
        let err = Guard::new(GuardConfig { allow: vec![entry.into()], allow_all: false }).unwrap_err();
        assert!(err.contains(want), "{entry:?}: {err}");
    }
    guard(&["localhost", "api.internal", "API.Internal.", "0.0.0.0/0", "::/0"]);
}

#[test]
fn guard_config_reads_from_json_and_rejects_unknown_fields() {
    let cfg: GuardConfig = serde_json::from_str(r#"{"allow": ["10.0.0.0/8"]}"#).unwrap();
    assert_eq!(cfg, GuardConfig { allow: vec!["10.0.0.0/8".into()], allow_all: false });
    assert!(serde_json::from_str::<GuardConfig>(r#"{"allow_everything": true}"#).is_err());
}
