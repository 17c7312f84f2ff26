//! Webhook endpoint URLs: which are acceptable, and which addresses tally
//! never sends to (SSRF: a customer's URL must not reach tally's own host,
//! its private network or a cloud metadata service).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("url '{0}' is not an absolute http(s) URL")]
    Malformed(String),
    #[error("url must use https (http is accepted only with TALLY_WEBHOOKS_ALLOW_PRIVATE=true)")]
    NotHttps,
    #[error("url must not carry a user name or password")]
    Credentials,
    #[error("url host {host} is (or resolves to) {addr}, a {kind} address, which webhooks may not reach")]
    Forbidden { host: String, addr: IpAddr, kind: &'static str },
    #[error("url host {0} does not resolve")]
    Unresolved(String),
    #[error("url is longer than 2048 characters")]
    TooLong,
}

/// A URL that passed the checks that need no network: its host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The host is an IP address (nothing to resolve).
    pub ip: Option<IpAddr>,
}

/// Parses and checks a URL without resolving it: https (or http when
/// private addresses are allowed), no credentials, and an IP literal host
/// must be public unless allowed.
pub fn check(url: &str, allow_private: bool) -> Result<CheckedUrl, UrlRefusal> {
    if url.len() > 2048 {
        return Err(UrlRefusal::TooLong);
    }
    let parsed = url::Url::parse(url).map_err(|_| UrlRefusal::Malformed(url.to_string()))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(UrlRefusal::NotHttps),
        _ => return Err(UrlRefusal::Malformed(url.to_string())),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlRefusal::Credentials);
    }
    let host = match parsed.host() {
        Some(url_host) => url_host,
        None => return Err(UrlRefusal::Malformed(url.to_string())),
    };
    let (host_text, ip) = match host {
        url::Host::Domain(d) => (d.to_string(), None),
        url::Host::Ipv4(a) => (a.to_string(), Some(IpAddr::V4(a))),
        url::Host::Ipv6(a) => (a.to_string(), Some(IpAddr::V6(a))),
    };
    let port = parsed.port_or_known_default().ok_or_else(|| UrlRefusal::Malformed(url.to_string()))?;
    if let Some(addr) = ip {
        check_addr(&host_text, addr, allow_private)?;
    }
    Ok(CheckedUrl { url: parsed.to_string(), host: host_text, port, ip })
}

/// Refuses an address tally must not send to, unless allowed.
pub fn check_addr(host: &str, addr: IpAddr, allow_private: bool) -> Result<(), UrlRefusal> {
    match forbidden_kind(addr) {
        Some(kind) if !allow_private => Err(UrlRefusal::Forbidden { host: host.to_string(), addr, kind }),
        _ => Ok(()),
    }
}

/// What kind of non-public address `addr` is, if it is one.
pub fn forbidden_kind(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) => v4_kind(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4_kind(v4),
            None => v6_kind(a),
        },
    }
}

fn v4_kind(a: Ipv4Addr) -> Option<&'static str> {
    let [o0, o1, ..] = a.octets();
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_unspecified() || o0 == 0 {
        Some("unspecified")
    } else if a.is_private() {
        Some("private")
    } else if a.is_link_local() {
        // 169.254.0.0/16, where cloud metadata services answer (169.254.169.254).
        Some("link-local or metadata")
    } else if o0 == 100 && (64..128).contains(&o1) {
        // 100.64.0.0/10, carrier-grade NAT (and Alibaba Cloud's metadata).
        Some("shared (carrier-grade NAT)")
    } else if a.is_broadcast() || a.is_multicast() || o0 >= 240 {
        Some("broadcast, multicast or reserved")
    } else if o0 == 192 && o1 == 0 && a.octets()[2] == 0 {
        Some("IETF protocol assignment")
    } else if o0 == 198 && (o1 == 18 || o1 == 19) {
        Some("benchmarking")
    } else {
        None
    }
}

fn v6_kind(a: Ipv6Addr) -> Option<&'static str> {
    let first = a.segments()[0];
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_unspecified() {
        Some("unspecified")
    } else if (first & 0xfe00) == 0xfc00 {
        // fc00::/7, unique local (AWS's IPv6 metadata fd00:ec2::254 among them).
        Some("private (unique local)")
    } else if (first & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if a.is_multicast() {
        Some("multicast")
    } else if first == 0x64 && a.segments()[1] == 0xff9b {
        // 64:ff9b::/96 NAT64 reaches IPv4 addresses, private ones included.
        let [.., hi, lo] = a.segments();
        let [h0, h1] = hi.to_be_bytes();
        let [l0, l1] = lo.to_be_bytes();
        v4_kind(Ipv4Addr::new(h0, h1, l0, l1))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> UrlRefusal {
        check(url, false).unwrap_err()
    }

    #[test]
    fn public_https_urls_pass() {
        let c = check("https://hooks.example.com/tally?x=1", false).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.ip), ("hooks.example.com", 443, None));
        assert!(check("https://93.184.216.34:8443/h", false).is_ok());
        assert!(check("https://[2606:2800:220:1:248:1893:25c8:1946]/h", false).is_ok());
    }

    #[test]
    fn private_and_metadata_addresses_are_refused() {
        for url in [
            "https://127.0.0.1/h",
            "https://127.1.2.3/h",
            "https://10.0.0.5/h",
            "https://172.16.0.1/h",
            "https://192.168.1.1/h",
            "https://169.254.169.254/latest/meta-data",
            "https://100.100.100.200/h",
            "https://0.0.0.0/h",
            "https://[::1]/h",
            "https://[fd00:ec2::254]/h",
            "https://[fe80::1]/h",
            "https://[::ffff:127.0.0.1]/h",
            "https://[::ffff:169.254.169.254]/h",
            "https://[64:ff9b::a9fe:a9fe]/h",
        ] {
            assert!(matches!(refused(url), UrlRefusal::Forbidden { .. }), "{url}");
        }
        // Decimal and hex spellings of 127.0.0.1 are IP literals to the URL parser.
        assert!(matches!(refused("https://2130706433/h"), UrlRefusal::Forbidden { .. }));
        assert!(matches!(refused("https://0x7f.0.0.1/h"), UrlRefusal::Forbidden { .. }));
    }

    #[test]
    fn http_credentials_and_other_schemes_are_refused() {
        assert_eq!(refused("http://hooks.example.com/h"), UrlRefusal::NotHttps);
        assert_eq!(refused("https://user:pw@hooks.example.com/h"), UrlRefusal::Credentials);
        assert!(matches!(refused("ftp://hooks.example.com/h"), UrlRefusal::Malformed(_)));
        assert!(matches!(refused("not a url"), UrlRefusal::Malformed(_)));
    }

    #[test]
    fn allow_private_lets_local_http_through() {
        assert!(check("http://127.0.0.1:9000/h", true).is_ok());
        assert!(check("https://10.0.0.5/h", true).is_ok());
    }
}
