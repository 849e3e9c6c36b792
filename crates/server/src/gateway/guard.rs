//! Who may hold a connection: every accepted connection's slot in the
//! connection limits ([`Gate`]), and the checks made before a WebSocket
//! upgrade is accepted: the browser origin, the client address (through
//! trusted proxies), the per-IP connection rate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::http::HeaderMap;
use dashmap::DashMap;
use metrics::Gauge;
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

/// Why a connection or an upgrade was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` reached.
    Full,
    /// `--max-connections-per-ip` reached for this address.
    TooManyConnections,
    /// `--connect-rate-per-ip` exceeded.
    TooFast,
}

impl Refusal {
    /// What the client is told, and what the log says.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Full => "connection limit reached",
            Refusal::TooManyConnections => "too many connections from this address",
            Refusal::TooFast => "connecting too fast from this address",
        }
    }
}

/// The connection limits. Every accepted connection (plain or TLS, before
/// and after its handshake, idle, serving a request, or a WebSocket) holds
/// one [`Slot`] from accept until the server is done with its socket: one
/// in `--max-connections` and one in its IP's `--max-connections-per-ip`.
///
/// Per IP, a connection counts under its peer address from accept, except
/// when the peer is a trusted proxy: its `X-Forwarded-For` is not known
/// until a request arrives, and counting every client behind the proxy as
/// the proxy would lock them all out together. So a proxy's connections
/// count only globally until one becomes a WebSocket; then it also counts
/// under the forwarded client address ([`Gate::upgrade`]). Limiting the
/// proxy's own plain HTTP clients per IP is the proxy's job.
pub struct Gate {
    max_connections: usize,
    open: AtomicUsize,
    /// Slots taken and given back since start: a wave of connections
    /// coming or going, for `memory::trim_after_waves`.
    churn: AtomicUsize,
    trusted: Vec<IpAddr>,
    ips: IpLimits,
    /// Open slots, for `/metrics`.
    gauge: Gauge,
}

impl Gate {
    pub fn new(
        max_connections: usize,
        max_per_ip: usize,
        rate_per_ip: u32,
        trusted: Vec<IpAddr>,
        gauge: Gauge,
    ) -> Gate {
        Gate {
            max_connections,
            open: AtomicUsize::new(0),
            churn: AtomicUsize::new(0),
            trusted,
            ips: IpLimits::new(max_per_ip, rate_per_ip),
            gauge,
        }
    }

    /// A slot for a connection just accepted from `peer`, or why not.
    pub fn open(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        self.take(peer, Take::Connection)
    }

    /// One of `--max-connections` and, unless `ip` is a trusted proxy, one
    /// of its `--max-connections-per-ip` (and with `Take::Both` a token of
    /// its connect rate).
    fn take(self: &Arc<Self>, ip: IpAddr, take: Take) -> Result<Slot, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        self.gauge.increment(1.0);
        self.churn.fetch_add(1, Ordering::Relaxed);
        // From here on dropping `slot` gives back what it holds.
        let mut slot = Slot {
            gate: self.clone(),
            counts: Counts {
                global: true,
                ip: None,
            },
        };
        if !self.trusted.contains(&ip) {
            self.ips.admit(ip, take)?;
            slot.counts.ip = Some(ip);
        }
        Ok(slot)
    }

    /// Admits a WebSocket upgrade on a connection from `peer`: the connect
    /// rate of the client address (through trusted proxies). The connection
    /// already holds its slot; through a proxy, the client's per-IP count
    /// is taken here and returned (to be held as long as the WebSocket).
    pub fn upgrade(
        self: &Arc<Self>,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Option<Slot>, Refusal> {
        let client = client_ip(peer, headers, &self.trusted);
        if !self.trusted.contains(&peer.ip()) {
            // Not a proxy: `client` is the peer, counted since accept.
            self.ips.admit(client, Take::Rate)?;
            return Ok(None);
        }
        self.ips.admit(client, Take::Both)?;
        Ok(Some(Slot {
            gate: self.clone(),
            counts: Counts {
                global: false,
                ip: Some(client),
            },
        }))
    }

    /// A slot for a session of the HTTP fallback transport (`/sse`), held
    /// for the session's life: it outlives the HTTP connections that carry
    /// it (a broken stream leaves it waiting for a reattach), so it counts
    /// on its own, globally and under the client's address (through trusted
    /// proxies), and takes a token of the connect rate like an upgrade.
    pub fn session(
        self: &Arc<Self>,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Slot, Refusal> {
        self.take(client_ip(peer, headers, &self.trusted), Take::Both)
    }

    /// The client address the per-IP limits count `peer`'s request under
    /// (its `X-Forwarded-For` entry when `peer` is a trusted proxy).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted)
    }

    /// Open slots.
    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections opened and closed since start (wrapping).
    pub fn churn(&self) -> usize {
        self.churn.load(Ordering::Relaxed)
    }

    /// Forgets idle addresses (see [`IpLimits::sweep`]).
    pub fn sweep(&self) {
        self.ips.sweep();
    }
}

/// What a connection holds in the [`Gate`]'s counts; given back on drop.
pub struct Slot {
    gate: Arc<Gate>,
    counts: Counts,
}

/// The counts a [`Slot`] holds, without its gate: for a holder that can
/// reach the gate otherwise (a WebSocket's handler: 18 bytes, where a
/// `Slot` takes 32), and gives them back with [`Gate::release`].
#[derive(Default)]
pub struct Counts {
    /// One of `--max-connections`.
    global: bool,
    /// One of this address's `--max-connections-per-ip`.
    ip: Option<IpAddr>,
}

impl Slot {
    /// The counts, for the holder to give back with [`Gate::release`].
    pub fn into_counts(mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(std::mem::take(&mut self.counts));
    }
}

impl Gate {
    /// Gives back what `counts` holds.
    pub fn release(&self, counts: Counts) {
        if counts.global {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.gauge.decrement(1.0);
            self.churn.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(ip) = counts.ip {
            self.ips.release(ip);
        }
    }

    /// Both counts of a WebSocket as one: the connection's since accept
    /// and, through a trusted proxy, the forwarded client's per-IP count.
    /// At most one of them counts an address: [`Gate::upgrade`] takes the
    /// client's only when the peer is a trusted proxy, which [`Gate::open`]
    /// did not count per IP. (Were both to, the second address's count
    /// would be given back here.)
    pub fn join(&self, mut first: Counts, mut second: Counts) -> Counts {
        debug_assert!(first.ip.is_none() || second.ip.is_none());
        first.global |= std::mem::take(&mut second.global);
        if first.ip.is_none() {
            first.ip = second.ip.take();
        }
        self.release(second);
        first
    }
}

/// What [`IpLimits::admit`] takes from an address.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    /// A connection count.
    Connection,
    /// A token of the connect rate.
    Rate,
    Both,
}

struct IpState {
    connections: usize,
    tokens: f64,
    last: Instant,
}

/// Connections per IP, and new connections per second per IP.
struct IpLimits {
    max_connections: usize,
    rate: f64,
    ips: DashMap<IpAddr, Mutex<IpState>>,
}

impl IpLimits {
    fn new(max_connections: usize, rate_per_second: u32) -> IpLimits {
        IpLimits {
            max_connections,
            rate: f64::from(rate_per_second),
            ips: DashMap::new(),
        }
    }

    /// Takes a connection count and/or a rate token from `ip`, or refuses
    /// (taking nothing). Every count taken must be [`IpLimits::release`]d.
    fn admit(&self, ip: IpAddr, take: Take) -> Result<(), Refusal> {
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
        let count = take != Take::Rate;
        if count && self.max_connections > 0 && st.connections >= self.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        if take != Take::Connection && self.rate > 0.0 {
            let elapsed = now.saturating_duration_since(st.last).as_secs_f64();
            st.last = now;
            st.tokens = (st.tokens + elapsed * self.rate).min(burst);
            if st.tokens < 1.0 {
                return Err(Refusal::TooFast);
            }
            st.tokens -= 1.0;
        }
        if count {
            st.connections += 1;
        }
        Ok(())
    }

    fn release(&self, ip: IpAddr) {
        if let Some(entry) = self.ips.get(&ip) {
            let mut st = entry.lock();
            st.connections = st.connections.saturating_sub(1);
        }
    }

    /// Forgets addresses with no connection and a full bucket (called
    /// periodically so the map does not grow with every address ever seen).
    fn sweep(&self) {
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
        assert!(limits.admit(ip, Take::Connection).is_ok());
        assert!(limits.admit(ip, Take::Both).is_ok());
        assert_eq!(
            limits.admit(ip, Take::Connection),
            Err(Refusal::TooManyConnections)
        );
        assert_eq!(limits.admit(ip, Take::Rate), Ok(()), "no count taken");
        limits.release(ip);
        assert!(limits.admit(ip, Take::Connection).is_ok());

        let rate = IpLimits::new(0, 5);
        let admitted = (0..100)
            .filter(|_| rate.admit(ip, Take::Rate).is_ok())
            .count();
        assert_eq!(admitted, 10, "a burst of twice the rate");
        assert!(
            rate.admit(ip, Take::Connection).is_ok(),
            "accepting takes no token"
        );
    }

    fn gate(max: usize, per_ip: usize, trusted: &[IpAddr]) -> Arc<Gate> {
        Arc::new(Gate::new(max, per_ip, 0, trusted.to_vec(), Gauge::noop()))
    }

    #[test]
    fn every_connection_holds_one_slot_until_dropped() {
        let (a, b): (IpAddr, IpAddr) = ("1.1.1.1".parse().unwrap(), "2.2.2.2".parse().unwrap());
        let gate = gate(3, 2, &[]);
        let a1 = gate.open(a).unwrap();
        let _a2 = gate.open(a).unwrap();
        assert_eq!(gate.open(a).err(), Some(Refusal::TooManyConnections));
        assert_eq!(
            gate.open_count(),
            2,
            "a refusal per IP gives its global slot back"
        );
        let _b1 = gate.open(b).unwrap();
        assert_eq!(gate.open(b).err(), Some(Refusal::Full));
        drop(a1);
        assert_eq!(gate.open_count(), 2);
        let _a3 = gate.open(a).unwrap();
        // An upgrade from a direct peer takes no second count.
        let peer = SocketAddr::new(a, 1);
        assert!(gate.upgrade(peer, &HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn a_trusted_proxy_counts_per_ip_only_for_its_forwarded_websockets() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let gate = gate(100, 2, &[proxy]);
        // The proxy's connections are not limited as one client.
        let held: Vec<Slot> = (0..5).map(|_| gate.open(proxy).unwrap()).collect();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        let from_proxy = SocketAddr::new(proxy, 1);
        let ws1 = gate.upgrade(from_proxy, &headers).unwrap();
        assert!(
            ws1.is_some(),
            "the client's count is held with the WebSocket"
        );
        let _ws2 = gate.upgrade(from_proxy, &headers).unwrap();
        assert_eq!(
            gate.upgrade(from_proxy, &headers).err(),
            Some(Refusal::TooManyConnections)
        );
        drop(ws1);
        assert!(gate.upgrade(from_proxy, &headers).is_ok());
        assert_eq!(
            gate.open_count(),
            held.len(),
            "upgrades take no global slot"
        );
    }

    #[test]
    fn a_joined_slot_gives_back_both_counts() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let gate = gate(100, 1, &[proxy]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        let from_proxy = SocketAddr::new(proxy, 1);
        let connection = gate.open(proxy).unwrap().into_counts();
        let client = gate.upgrade(from_proxy, &headers).unwrap().unwrap();
        let joined = gate.join(connection, client.into_counts());
        assert_eq!(gate.open_count(), 1);
        assert_eq!(
            gate.upgrade(from_proxy, &headers).err(),
            Some(Refusal::TooManyConnections),
            "the joined slot holds the client's count"
        );
        gate.release(joined);
        assert_eq!(gate.open_count(), 0);
        assert!(gate.upgrade(from_proxy, &headers).unwrap().is_some());
    }
}
