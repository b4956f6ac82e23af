//! Who the client is, as Keycloak itself decides it behind a reverse proxy (docs/keycloak-enforcer.md §10): `Forwarded` (RFC 7239) or
//! `X-Forwarded-For`/`-Proto` are believed only when the connection comes from a trusted proxy;
//! otherwise the peer address and the connection's own scheme.
//!
//! Through a chain of proxies the client is the rightmost address that is not a trusted proxy
//! (each trusted hop appends what it saw), so a client cannot pick its own address by sending a
//! forged header through a proxy that appends to it.

use std::net::IpAddr;

/// Which forwarding headers are read (Keycloak's `proxy-headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeaders {
    Forwarded,
    XForwarded,
}

/// An address or CIDR block (Keycloak's `proxy-trusted-addresses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

/// Why an address or CIDR block in the configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    NotAnAddress(String),
    BadPrefix { text: String, max: u8 },
}

impl std::fmt::Display for CidrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CidrError::NotAnAddress(s) => write!(f, "\"{s}\" is not an IP address or CIDR block"),
            CidrError::BadPrefix { text, max } => {
                write!(f, "\"{text}\": the prefix length must be 0 to {max}")
            }
        }
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAnAddress(s.to_string()))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| CidrError::BadPrefix {
                    text: s.to_string(),
                    max,
                })?,
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = canonical(*ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rem = bits % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rem == 0 || {
        let mask = 0xffu8 << (8 - rem);
        a[full] & mask == b[full] & mask
    }
}

/// The trusted-proxy settings of an enforcer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyTrust {
    pub headers: Option<ProxyHeaders>,
    pub trusted: Vec<Cidr>,
}

/// The client as the enforcer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub addr: String,
    pub secure: bool,
}

/// An address from a peer string or a forwarding header: `1.2.3.4`, `1.2.3.4:80`, `[::1]:80`,
/// `::1`, optionally quoted.
pub fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

impl ProxyTrust {
    fn is_trusted(&self, ip: &IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// `headers` are the request's `(name, value)` lines (lower-case names).
    pub fn client(&self, peer: Option<&str>, tls: bool, headers: &[(String, Vec<u8>)]) -> Client {
        let peer_ip = peer.and_then(parse_addr);
        let direct = Client {
            addr: peer_ip.map_or_else(
                || peer.unwrap_or_default().to_string(),
                |ip| canonical(ip).to_string(),
            ),
            secure: tls,
        };
        let (Some(kind), Some(ip)) = (self.headers, peer_ip) else {
            return direct;
        };
        if !self.is_trusted(&ip) {
            return direct;
        }
        let values = |name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| {
                    String::from_utf8_lossy(v)
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect::<Vec<_>>()
                })
                .filter(|s| !s.is_empty())
                .collect()
        };
        match kind {
            ProxyHeaders::XForwarded => {
                let hops = values("x-forwarded-for");
                let addr = self
                    .walk(hops.iter().map(String::as_str))
                    .map(str::to_string);
                let proto = values("x-forwarded-proto").into_iter().next();
                Client {
                    addr: addr
                        .map(|a| parse_addr(&a).map_or(a, |ip| canonical(ip).to_string()))
                        .unwrap_or(direct.addr),
                    secure: proto.map_or(direct.secure, |p| p.eq_ignore_ascii_case("https")),
                }
            }
            ProxyHeaders::Forwarded => {
                let elements: Vec<Vec<(String, String)>> = values("forwarded")
                    .iter()
                    .map(|e| {
                        e.split(';')
                            .filter_map(|pair| {
                                let (k, v) = pair.split_once('=')?;
                                Some((
                                    k.trim().to_ascii_lowercase(),
                                    v.trim().trim_matches('"').to_string(),
                                ))
                            })
                            .collect()
                    })
                    .collect();
                let get = |e: &[(String, String)], k: &str| {
                    e.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
                };
                let fors: Vec<String> = elements
                    .iter()
                    .map(|e| get(e, "for").unwrap_or_default())
                    .collect();
                let chosen = self.walk_index(fors.iter().map(String::as_str));
                let Some(i) = chosen else {
                    return direct;
                };
                let addr = &fors[i];
                Client {
                    addr: parse_addr(addr)
                        .map_or_else(|| addr.clone(), |ip| canonical(ip).to_string()),
                    secure: get(&elements[i], "proto")
                        .map_or(direct.secure, |p| p.eq_ignore_ascii_case("https")),
                }
            }
        }
    }

    /// The rightmost hop that is not a trusted proxy (the leftmost when all are trusted).
    fn walk<'h>(&self, hops: impl DoubleEndedIterator<Item = &'h str> + Clone) -> Option<&'h str> {
        let all: Vec<&str> = hops.collect();
        self.walk_index(all.iter().copied()).map(|i| all[i])
    }

    fn walk_index<'h>(&self, hops: impl Iterator<Item = &'h str>) -> Option<usize> {
        let all: Vec<&str> = hops.collect();
        if all.is_empty() {
            return None;
        }
        for (i, hop) in all.iter().enumerate().rev() {
            match parse_addr(hop) {
                Some(ip) if self.is_trusted(&ip) => continue,
                // An untrusted address, or something that is not an address ("unknown", an
                // obfuscated identifier): the hop before it cannot be vouched for.
                _ => return Some(i),
            }
        }
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::request::view::lines as h;

    fn trust(kind: ProxyHeaders, nets: &[&str]) -> ProxyTrust {
        ProxyTrust {
            headers: Some(kind),
            trusted: nets.iter().map(|n| Cidr::parse(n).unwrap()).collect(),
        }
    }

    #[test]
    fn cidr_parsing_and_containment() {
        let c = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(c.contains(&"127.9.9.9".parse().unwrap()));
        assert!(c.contains(&"::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.contains(&"128.0.0.1".parse().unwrap()));
        let one = Cidr::parse("192.168.0.32").unwrap();
        assert!(one.contains(&"192.168.0.32".parse().unwrap()));
        assert!(!one.contains(&"192.168.0.33".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/33").unwrap();
        assert!(v6.contains(&"2001:db8:7fff::1".parse().unwrap()));
        assert!(!v6.contains(&"2001:db8:8000::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(&"8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
    }

    #[test]
    fn headers_are_ignored_without_trust() {
        let hs = h(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ]);
        let none = ProxyTrust::default();
        let c = none.client(Some("127.0.0.1:4000"), false, &hs);
        assert_eq!(
            c,
            Client {
                addr: "127.0.0.1".into(),
                secure: false
            }
        );
        // the peer is not a trusted proxy
        let t = trust(ProxyHeaders::XForwarded, &["10.0.0.0/8"]);
        let c = t.client(Some("127.0.0.1:4000"), true, &hs);
        assert_eq!(
            c,
            Client {
                addr: "127.0.0.1".into(),
                secure: true
            }
        );
    }

    #[test]
    fn x_forwarded_from_a_trusted_peer() {
        let t = trust(ProxyHeaders::XForwarded, &["127.0.0.1", "10.0.0.0/8"]);
        let c = t.client(
            Some("127.0.0.1:4000"),
            false,
            &h(&[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "https"),
            ]),
        );
        assert_eq!(
            c,
            Client {
                addr: "203.0.113.7".into(),
                secure: true
            }
        );
        // a client-forged first entry is not believed: the rightmost untrusted hop is the client
        let c = t.client(
            Some("127.0.0.1:4000"),
            false,
            &h(&[("x-forwarded-for", "1.1.1.1, 198.51.100.2, 10.1.2.3")]),
        );
        assert_eq!(c.addr, "198.51.100.2");
        assert!(!c.secure);
        // several header lines are one list
        let c = t.client(
            Some("127.0.0.1"),
            false,
            &h(&[
                ("x-forwarded-for", "198.51.100.9"),
                ("x-forwarded-for", "10.0.0.1"),
            ]),
        );
        assert_eq!(c.addr, "198.51.100.9");
        // all hops trusted: the leftmost; none at all: the peer
        let c = t.client(
            Some("127.0.0.1"),
            false,
            &h(&[("x-forwarded-for", "10.0.0.2, 10.0.0.1")]),
        );
        assert_eq!(c.addr, "10.0.0.2");
        assert_eq!(t.client(Some("127.0.0.1"), false, &[]).addr, "127.0.0.1");
    }

    #[test]
    fn forwarded_rfc7239() {
        let t = trust(ProxyHeaders::Forwarded, &["127.0.0.0/8"]);
        let c = t.client(
            Some("127.0.0.1:9"),
            false,
            &h(&[(
                "forwarded",
                r#"for=192.0.2.60;proto=https;by=203.0.113.43, for="[2001:db8:cafe::17]:4711";proto=http, for=127.0.0.5"#,
            )]),
        );
        assert_eq!(
            c,
            Client {
                addr: "2001:db8:cafe::17".into(),
                secure: false
            }
        );
        let c = t.client(
            Some("127.0.0.1:9"),
            false,
            &h(&[("forwarded", "for=192.0.2.60;proto=https")]),
        );
        assert_eq!(
            c,
            Client {
                addr: "192.0.2.60".into(),
                secure: true
            }
        );
        // X-Forwarded-For means nothing in forwarded mode
        let c = t.client(
            Some("127.0.0.1:9"),
            false,
            &h(&[("x-forwarded-for", "192.0.2.1")]),
        );
        assert_eq!(c.addr, "127.0.0.1");
        let c = t.client(
            Some("127.0.0.1:9"),
            false,
            &h(&[("forwarded", "for=unknown")]),
        );
        assert_eq!(c.addr, "unknown");
    }
}
