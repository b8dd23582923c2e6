//! The SSRF guard: which IP addresses an HTTP tool may connect to.
//!
//! Owns the table of refused address ranges (loopback, private, link-local, CGNAT, reserved,
//! documentation, multicast, ... and every IPv6 form that embeds an IPv4 address), the
//! operator's allow list, and the check on URLs whose host is an IP literal. Host names are
//! checked by `resolve::GuardedResolver` on the addresses they resolve to; this module only
//! answers "may this address be connected to, and if not, why".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use serde::{Deserialize, Serialize};

/// The operator's exceptions to the guard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// CIDRs (`10.0.0.0/8`, `127.0.0.1/32`, `::1/128`; a bare address means just that one) and
    /// host names (`localhost`, `api.internal`) that may be reached although they are private.
    /// A host name lets through every address it resolves to, and only under that name.
    pub allow: Vec<String>,
    /// Turns the guard off. For development setups only.
    pub allow_all: bool,
}

/// A refused address, with the reason in words a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused: {ip} is {reason}; allow it with `allow: [\"{}\"]` in the HTTP tool guard settings", allow_entry(*ip))]
pub struct Denied {
    pub ip: IpAddr,
    /// For example `link-local (cloud metadata)` or `an IPv4-mapped form of 127.0.0.1, which is loopback`.
    pub reason: String,
}

/// The SSRF policy. Cheap to share behind an `Arc`; immutable once built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    nets: Vec<Net>,
    /// Lower case, without a trailing dot.
    hosts: Vec<String>,
    allow_all: bool,
}

impl Guard {
    /// Builds the guard, refusing allow entries that are neither a CIDR nor a host name.
    pub fn new(cfg: GuardConfig) -> Result<Self, String> {
        let mut nets = Vec::new();
        let mut hosts = Vec::new();
        for entry in &cfg.allow {
            let entry = entry.trim();
            if let Some(net) = Net::parse(entry)? {
                nets.push(net);
            } else if is_host_name(entry) {
                hosts.push(normalize_host(entry));
            } else {
                return Err(format!(
                    "guard allow entry `{entry}` is neither a CIDR (like `10.0.0.0/8`) nor a host name (like `api.internal`)"
                ));
            }
        }
        Ok(Self { nets, hosts, allow_all: cfg.allow_all })
    }

    /// Whether a connection to `ip` is allowed.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Denied> {
        if self.allow_all {
            return Ok(());
        }
        let Some(reason) = classify(ip) else { return Ok(()) };
        // The operator may name an address in either form: `127.0.0.1/32` also admits
        // `::ffff:127.0.0.1`, which is the same socket on a dual-stack host.
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        if self.nets.iter().any(|n| n.contains(ip) || embedded.is_some_and(|e| n.contains(e))) {
            return Ok(());
        }
        Err(Denied { ip, reason })
    }

    /// Whether `host` is on the allow list by name (every address it resolves to is allowed).
    pub(crate) fn host_allowed(&self, host: &str) -> bool {
        self.allow_all || self.hosts.iter().any(|h| *h == normalize_host(host))
    }

    /// Keeps the addresses of `host` that may be connected to. Errors when none is left, naming
    /// every refused address and why.
    pub(crate) fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        if addrs.is_empty() {
            return Err(Refused { host: host.to_owned(), denied: Vec::new() });
        }
        if self.host_allowed(host) {
            return Ok(addrs);
        }
        let mut kept = Vec::new();
        let mut denied = Vec::new();
        for addr in addrs {
            match self.check_ip(addr.ip()) {
                Ok(()) => kept.push(addr),
                Err(d) => {
                    if !denied.contains(&d) {
                        denied.push(d);
                    }
                }
            }
        }
        if kept.is_empty() { Err(Refused { host: host.to_owned(), denied }) } else { Ok(kept) }
    }

    /// The checks on a URL before a request is sent to it: the scheme, and the host when it is
    /// an IP literal. Literals never reach a resolver (the connector connects to them directly),
    /// so this is the only check they get. The URL parser has already turned numeric forms like
    /// `http://2130706433/` or `http://0x7f.1/` into dotted IPv4, so `host_str` is exactly the
    /// text the connector will parse as an address. Clients other than `HttpCaller` (the MCP
    /// transport) call it before every request, next to [`Guard::resolver`] for host names.
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("refused: {url} is not an http or https URL"));
        }
        let Some(host) = url.host_str() else {
            return Err(format!("refused: {url} has no host"));
        };
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check_ip(ip).map_err(|d| d.to_string())?;
        }
        Ok(())
    }
}

impl Guard {
    /// Checks a destination chosen by someone else (e.g. an MCP `server_url` in an API request)
    /// before anything connects to it: scheme, literal addresses, and every address the host
    /// name resolves to now — all must be allowed, since the connecting client may pick any.
    pub async fn check_destination(&self, url: &Url) -> Result<(), String> {
        self.check_url(url)?;
        let host = url.host_str().unwrap_or_default();
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if bare.parse::<IpAddr>().is_ok() || self.host_allowed(bare) {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((bare, port)).await.map_err(|e| format!("cannot resolve {bare}: {e}"))?.collect();
        if addrs.is_empty() {
            return Err(format!("{bare} resolves to no address"));
        }
        for a in addrs {
            if let Err(d) = self.check_ip(a.ip()) {
                return Err(format!("refused: {bare} resolves to {}, which is {}", d.ip, d.reason));
            }
        }
        Ok(())
    }
}

/// A host name none of whose addresses may be connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub host: String,
    /// Empty when the name resolved to no address at all.
    pub denied: Vec<Denied>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = &self.host;
        if self.denied.is_empty() {
            return write!(f, "{host} resolves to no address");
        }
        write!(f, "refused: {host} resolves only to refused addresses: ")?;
        for (i, d) in self.denied.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} is {}", d.ip, d.reason)?;
        }
        let entries: Vec<String> = self.denied.iter().map(|d| format!("\"{}\"", allow_entry(d.ip))).collect();
        write!(
            f,
            "; allow them with `allow: [{}]` or the name with `allow: [\"{host}\"]` in the HTTP tool guard settings",
            entries.join(", ")
        )
    }
}

impl std::error::Error for Refused {}

/// The allow entry that admits exactly `ip`.
fn allow_entry(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

/// Why `ip` is refused by default, or `None` when it is a public address.
pub(crate) fn classify(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(str::to_owned),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// The IANA IPv4 special-purpose registry, less the few entries that are globally reachable
/// by design and not worth the exception (the whole of 192.0.0.0/24 is refused).
fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(169, 254, 170, 2) {
        // AWS, GCP, Azure, OpenStack instance metadata; ECS task metadata.
        "link-local (cloud metadata)"
    } else if ip == Ipv4Addr::new(100, 100, 100, 200) {
        // Alibaba Cloud instance metadata.
        "carrier-grade NAT space 100.64.0.0/10 (cloud metadata)"
    } else if ip.is_unspecified() {
        "unspecified (0.0.0.0)"
    } else if a == 0 {
        "in 0.0.0.0/8 (\"this network\")"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if a == 100 && (b & 0xc0) == 64 {
        "carrier-grade NAT space 100.64.0.0/10"
    } else if ip.is_link_local() {
        "link-local"
    } else if a == 192 && b == 0 && c == 0 {
        "reserved for IETF protocol assignments (192.0.0.0/24)"
    } else if ip.is_documentation() {
        "reserved for documentation"
    } else if a == 192 && b == 88 && c == 99 {
        "the deprecated 6to4 relay anycast range 192.88.99.0/24"
    } else if a == 198 && (b & 0xfe) == 18 {
        "reserved for benchmarking (198.18.0.0/15)"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if a >= 240 {
        "reserved (240.0.0.0/4)"
    } else {
        return None;
    };
    Some(reason)
}

/// IPv6 is refused unless it is global unicast (2000::/3) outside the special blocks; every form
/// that carries an IPv4 address (mapped, compatible, NAT64, 6to4) is judged by that address.
fn classify_v6(ip: Ipv6Addr) -> Option<String> {
    let s = ip.segments();
    let reason = if let Some(v4) = ip.to_ipv4_mapped() {
        let why = classify_v4(v4)?;
        format!("an IPv4-mapped form of {v4}, which is {why}")
    } else if ip.is_unspecified() {
        "unspecified (::)".to_owned()
    } else if ip.is_loopback() {
        "loopback".to_owned()
    } else if s[..6] == [0; 6] {
        // ::a.b.c.d, deprecated since RFC 4291; some stacks still route it to IPv4.
        let v4 = embedded_low_v4(ip);
        match classify_v4(v4) {
            Some(why) => format!("an IPv4-compatible form of {v4}, which is {why}"),
            None => format!("an IPv4-compatible form of {v4} (deprecated, never used by real hosts)"),
        }
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64: the gateway connects to the embedded IPv4 address for us.
        let v4 = embedded_low_v4(ip);
        let why = classify_v4(v4)?;
        format!("a NAT64 form of {v4}, which is {why}")
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        "local-use NAT64 (64:ff9b:1::/48)".to_owned()
    } else if s[..4] == [0x100, 0, 0, 0] {
        "discard-only (100::/64)".to_owned()
    } else if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        "unique local (cloud metadata)".to_owned()
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "unique local (fc00::/7)".to_owned()
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "link-local (fe80::/10)".to_owned()
    } else if (s[0] & 0xffc0) == 0xfec0 {
        "site-local (fec0::/10, deprecated)".to_owned()
    } else if ip.is_multicast() {
        "multicast".to_owned()
    } else if (s[0] & 0xe000) != 0x2000 {
        "reserved (outside global unicast 2000::/3)".to_owned()
    } else if s[0] == 0x2001 && s[1] == 0 {
        // The client's IPv4 address is in there too, obfuscated; nobody needs Teredo here.
        "a Teredo tunnel address (2001::/32)".to_owned()
    } else if s[0] == 0x2001 && s[1] == 2 && s[2] == 0 {
        "reserved for benchmarking (2001:2::/48)".to_owned()
    } else if s[0] == 0x2001 && (s[1] & 0xfff0) == 0x10 {
        "ORCHID (2001:10::/28, deprecated)".to_owned()
    } else if s[0] == 0x2001 && (s[1] & 0xfff0) == 0x20 {
        "ORCHIDv2 (2001:20::/28), not routable".to_owned()
    } else if (s[0] == 0x2001 && s[1] == 0xdb8) || (s[0] == 0x3fff && (s[1] & 0xf000) == 0) {
        "reserved for documentation".to_owned()
    } else if s[0] == 0x2002 {
        let v4 = embedded_6to4(ip);
        let why = classify_v4(v4)?;
        format!("a 6to4 form of {v4}, which is {why}")
    } else {
        return None;
    };
    Some(reason)
}

/// The IPv4 address an IPv6 address stands for, in the forms where the operator would think of
/// the two as one host (mapped, compatible, NAT64, 6to4).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if (s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback()) || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // IPv4-compatible and NAT64.
        Some(embedded_low_v4(ip))
    } else if s[0] == 0x2002 {
        Some(embedded_6to4(ip))
    } else {
        None
    }
}

fn embedded_low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

fn embedded_6to4(ip: Ipv6Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[2], o[3], o[4], o[5])
}

/// An allowed network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// `Ok(None)` when `text` does not start with an address (it may be a host name).
    fn parse(text: &str) -> Result<Option<Self>, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let Ok(addr) = addr_text.parse::<IpAddr>() else { return Ok(None) };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("guard allow entry `{text}`: the prefix length must be 0 to {max}")),
            },
        };
        let net = Self { addr, prefix };
        // `10.0.0.1/8` is most likely a typo; saying so beats silently allowing all of 10/8.
        if net.network() != addr {
            return Err(format!(
                "guard allow entry `{text}` has bits set after the prefix; did you mean `{}/{prefix}`?",
                net.network()
            ));
        }
        Ok(Some(net))
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & mask128(self.prefix))),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => (a.to_bits() & mask32(self.prefix)) == n.to_bits(),
            (IpAddr::V6(n), IpAddr::V6(a)) => (a.to_bits() & mask128(self.prefix)) == n.to_bits(),
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

fn is_host_name(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn normalize_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str]) -> Guard {
        Guard::new(GuardConfig { allow: allow.iter().map(|s| (*s).to_owned()).collect(), allow_all: false }).unwrap()
    }

    #[test]
    fn masks_cover_the_edges() {
        assert_eq!(mask32(0), 0);
        assert_eq!(mask32(32), u32::MAX);
        assert_eq!(mask32(8), 0xff00_0000);
        assert_eq!(mask128(0), 0);
        assert_eq!(mask128(128), u128::MAX);
    }

    #[test]
    fn filter_keeps_only_allowed_addresses_and_names_the_refused_ones() {
        let g = guard(&[]);
        let addrs: Vec<SocketAddr> = vec!["10.0.0.1:0".parse().unwrap(), "93.184.216.34:0".parse().unwrap()];
        assert_eq!(g.filter("example.com", addrs).unwrap(), vec!["93.184.216.34:0".parse().unwrap()]);
        let err = g.filter("evil.example", vec!["127.0.0.1:0".parse().unwrap()]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("127.0.0.1 is loopback"), "{text}");
        assert!(text.contains("allow: [\"evil.example\"]"), "{text}");
        assert_eq!(
            g.filter("nothing.example", vec![]).unwrap_err().to_string(),
            "nothing.example resolves to no address"
        );
    }

    #[test]
    fn an_allowed_name_admits_all_its_addresses_under_that_name_only() {
        let g = guard(&["API.internal."]);
        let addrs: Vec<SocketAddr> = vec!["10.1.2.3:0".parse().unwrap()];
        assert_eq!(g.filter("api.internal", addrs.clone()).unwrap(), addrs);
        assert_eq!(g.filter("api.INTERNAL.", addrs.clone()).unwrap(), addrs);
        assert!(g.filter("other.internal", addrs).is_err());
        assert!(g.check_ip("10.1.2.3".parse().unwrap()).is_err());
    }
}
