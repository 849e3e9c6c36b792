//! Checks made before a WebSocket upgrade is accepted: the browser origin,
//! the client address (through trusted proxies), and per-IP connection
//! limits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use axum::http::HeaderMap;
use dashmap::DashMap;
use parking_lot::Mutex;

/// Whether `origin` is allowed. An empty list allows every origin. Entries
/// are exact origins (`https://chat.example.com`) or wildcard subdomains
/// (`https://*.example.com`, which matches `https://a.example.com` and
/// `https://a.b.example.com` but not `https://example.com`).
///
/// A page served by this server (the Origin's authority equals `Host`) is
/// allowed without being listed only when `Host` is an IP address or
/// `localhost`, so the built-in chat app works when reached that way. A
/// named host must be listed: with DNS rebinding, an attacker's page at
/// `http://evil.example:8080`, whose name now resolves to this server, sends
/// `Origin: http://evil.example:8080` and `Host: evil.example:8080`, which
/// match; an attacker cannot make a browser send an IP literal or
/// `localhost` as the host of its own page.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let same_origin = match (origin, host) {
        (Some(origin), Some(host)) => {
            address_host(host)
                && origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
        }
        _ => false,
    };
    if same_origin {
        return true;
    }
    // Browsers always send Origin on WebSocket upgrades; cross-site
    // hijacking is a browser attack, so clients without one (servers,
    // native apps) are not its concern.
    let Some(origin) = origin else { return true };
    let origin = origin.trim().to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.trim().to_ascii_lowercase();
        if pattern == "*" || pattern == origin {
            return true;
        }
        match pattern.split_once("://*.") {
            Some((scheme, domain)) => origin
                .strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|host| host.ends_with(&format!(".{domain}"))),
            None => false,
        }
    })
}

/// Whether a `Host` value names no DNS name: an IPv4 address, a bracketed
/// IPv6 address or `localhost`, each with an optional port.
fn address_host(host: &str) -> bool {
    let (literal, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) => (v6.parse::<Ipv6Addr>().is_ok(), port),
            None => return false,
        },
        None => {
            let (name, port) = host.find(':').map_or((host, ""), |i| host.split_at(i));
            let literal =
                name.parse::<Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("localhost");
            (literal, port)
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    literal && port_ok
}

/// The client's address: the peer, or — when the peer is a trusted proxy —
/// the right-most address in `X-Forwarded-For` that is not a trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let peer_ip = peer.ip();
    if !trusted.contains(&peer_ip) {
        return peer_ip;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer_ip)
}

/// Why an upgrade was refused by [`IpLimits::admit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooFast,
}

struct IpState {
    connections: usize,
    tokens: f64,
    last: Instant,
}

/// Connections per IP, and new connections per second per IP.
pub struct IpLimits {
    max_connections: usize,
    rate: f64,
    ips: DashMap<IpAddr, Mutex<IpState>>,
}

impl IpLimits {
    pub fn new(max_connections: usize, rate_per_second: u32) -> IpLimits {
        IpLimits {
            max_connections,
            rate: f64::from(rate_per_second),
            ips: DashMap::new(),
        }
    }

    /// Counts a new connection from `ip`, or refuses it. Every admitted
    /// connection must be [`IpLimits::release`]d.
    pub fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        let now = Instant::now();
        let burst = self.rate * 2.0;
        let entry = self.ips.entry(ip).or_insert_with(|| {
            Mutex::new(IpState {
                connections: 0,
                tokens: burst,
                last: now,
            })
        });
        let mut st = entry.lock();
        if self.max_connections > 0 && st.connections >= self.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        if self.rate > 0.0 {
            let elapsed = now.saturating_duration_since(st.last).as_secs_f64();
            st.last = now;
            st.tokens = (st.tokens + elapsed * self.rate).min(burst);
            if st.tokens < 1.0 {
                return Err(Refusal::TooFast);
            }
            st.tokens -= 1.0;
        }
        st.connections += 1;
        Ok(())
    }

    pub fn release(&self, ip: IpAddr) {
        if let Some(entry) = self.ips.get(&ip) {
            let mut st = entry.lock();
            st.connections = st.connections.saturating_sub(1);
        }
    }

    /// Forgets addresses with no connection and a full bucket (called
    /// periodically so the map does not grow with every address ever seen).
    pub fn sweep(&self) {
        let now = Instant::now();
        let burst = self.rate * 2.0;
        self.ips.retain(|_, st| {
            let st = st.lock();
            let refilled =
                st.tokens + now.saturating_duration_since(st.last).as_secs_f64() * self.rate;
            st.connections > 0 || refilled < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn origins() {
        let allowed = list(&["https://chat.example.com", "https://*.example.org"]);
        let allowed_one = |o| origin_allowed(&allowed, o, Some("127.0.0.1:8080"));
        assert!(allowed_one(Some("http://127.0.0.1:8080")), "same origin");
        assert!(!allowed_one(Some("http://127.0.0.1:9999")));
        assert!(!allowed_one(Some("http://switchboard.local:8080")));
        assert!(origin_allowed(
            &allowed,
            Some("https://chat.example.com"),
            None
        ));
        assert!(origin_allowed(
            &allowed,
            Some("HTTPS://Chat.Example.com"),
            None
        ));
        assert!(origin_allowed(
            &allowed,
            Some("https://a.example.org"),
            None
        ));
        assert!(origin_allowed(
            &allowed,
            Some("https://a.b.example.org"),
            None
        ));
        assert!(!origin_allowed(&allowed, Some("https://example.org"), None));
        assert!(!origin_allowed(
            &allowed,
            Some("http://a.example.org"),
            None
        ));
        assert!(!origin_allowed(&allowed, Some("https://evil.com"), None));
        assert!(!origin_allowed(
            &allowed,
            Some("https://chat.example.com.evil.com"),
            None
        ));
        assert!(!origin_allowed(
            &allowed,
            Some("https://evilexample.org"),
            None
        ));
        assert!(origin_allowed(&allowed, None, None));
        assert!(origin_allowed(&[], Some("https://anything"), None));
    }

    /// DNS rebinding: a page whose own name resolves to us has Origin and
    /// Host equal, so same-origin alone must not let a named host in.
    #[test]
    fn same_origin_is_exempt_only_for_addresses_and_localhost() {
        let allowed = list(&["https://chat.example.com"]);
        let same = |origin: &str, host: &str| origin_allowed(&allowed, Some(origin), Some(host));
        assert!(same("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same("http://10.1.2.3", "10.1.2.3"));
        assert!(same("http://[::1]:8080", "[::1]:8080"));
        assert!(same("http://[2001:db8::1]", "[2001:db8::1]"));
        assert!(same("http://localhost:8080", "localhost:8080"));
        assert!(same("http://LocalHost", "localhost"));
        // Rebinding: the attacker's name, whatever it resolves to.
        assert!(!same("http://evil.example:8080", "evil.example:8080"));
        assert!(!same("http://evil.example", "evil.example"));
        assert!(!same(
            "http://127.0.0.1.nip.io:8080",
            "127.0.0.1.nip.io:8080"
        ));
        assert!(!same(
            "http://localhost.evil.example",
            "localhost.evil.example"
        ));
        assert!(!same("http://1.2.3.4:80:80", "1.2.3.4:80:80"));
        assert!(!same("http://[::1", "[::1"));
        assert!(!same("http://[evil]:80", "[evil]:80"));
        assert!(!same("http://1.2.3.4:", "1.2.3.4:"));
        // Listed, the server's own name is allowed like any other origin.
        assert!(same("https://chat.example.com", "chat.example.com"));
        // No list: everything, rebinding included (the documented default).
        let any = |origin, host| origin_allowed(&[], Some(origin), Some(host));
        assert!(any("http://evil.example:8080", "evil.example:8080"));
    }

    #[test]
    fn forwarded_for_is_only_trusted_from_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 10.0.0.1".parse().unwrap());
        let from_proxy = SocketAddr::new(proxy, 1);
        let direct = SocketAddr::new("5.6.7.8".parse().unwrap(), 1);
        assert_eq!(
            client_ip(from_proxy, &headers, &[proxy]),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(direct, &headers, &[proxy]), direct.ip());
        assert_eq!(client_ip(from_proxy, &HeaderMap::new(), &[proxy]), proxy);
    }

    #[test]
    fn ip_limits() {
        let ip: IpAddr = "1.1.1.1".parse().unwrap();
        let limits = IpLimits::new(2, 0);
        assert!(limits.admit(ip).is_ok());
        assert!(limits.admit(ip).is_ok());
        assert_eq!(limits.admit(ip), Err(Refusal::TooManyConnections));
        limits.release(ip);
        assert!(limits.admit(ip).is_ok());

        let rate = IpLimits::new(0, 5);
        let admitted = (0..100).filter(|_| rate.admit(ip).is_ok()).count();
        assert_eq!(admitted, 10, "a burst of twice the rate");
    }
}
