//! ICE server configuration: the `ice_servers` of `joined` (the browser's `RTCIceServer` shape), parsed
//! into resolved STUN servers and TURN servers.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One entry of `joined.ice_servers` (same field names as the browser's `RTCIceServer`).
///
/// ```
/// let s: client::IceServer = serde_json::from_str(
///     r#"{"urls":["turn:127.0.0.1:3478?transport=udp"],"username":"u","credential":"p"}"#).unwrap();
/// assert_eq!(s.urls.len(), 1);
/// let s: client::IceServer = serde_json::from_str(r#"{"urls":"stun:127.0.0.1:3478"}"#).unwrap();
/// assert_eq!(s.urls, vec!["stun:127.0.0.1:3478".to_string()]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]` and `turns:host[:port][?transport=tcp]`
    /// (TURN over TLS) URLs; other schemes are skipped.
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    /// TURN username (TURN REST: `expiry:participant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Transport to a TURN server, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TurnTransport {
    Udp,
    Tcp,
    /// TLS over TCP (`turns:`).
    Tls,
}

impl TurnTransport {
    /// All transports, in fallback order.
    pub const ALL: [TurnTransport; 3] =
        [TurnTransport::Udp, TurnTransport::Tcp, TurnTransport::Tls];

    /// Name shown in events and logs (`udp`, `tcp`, `tls`).
    pub fn name(self) -> &'static str {
        match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        }
    }

    /// A byte stream (TCP or TLS): RFC 4571-style framing, no retransmissions.
    pub fn is_stream(self) -> bool {
        self != TurnTransport::Udp
    }
}

/// A parsed ICE server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IceUrl {
    Stun {
        host: String,
        port: u16,
    },
    Turn {
        host: String,
        port: u16,
        transport: TurnTransport,
    },
}

/// Parses `stun:`/`turn:`/`turns:` URLs (RFC 7064/7065). Unknown schemes, `turns:` over UDP (DTLS) and
/// `stuns:` give `None`. The default port is 3478, or 5349 for `turns:`.
pub(crate) fn parse_url(url: &str) -> Option<IceUrl> {
    let (scheme, rest) = url.trim().split_once(':')?;
    let scheme = scheme.to_ascii_lowercase();
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let hostport = hostport.trim_start_matches("//");
    let default_port = if scheme == "turns" { 5349 } else { 3478 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    match scheme.as_str() {
        "stun" => Some(IceUrl::Stun { host, port }),
        "turn" | "turns" => {
            let tls = scheme == "turns";
            let transport = match query
                .and_then(|q| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix("transport="))
                        .map(|t| t.to_ascii_lowercase())
                })
                .as_deref()
            {
                None | Some("tcp") if tls => TurnTransport::Tls,
                None | Some("udp") if !tls => TurnTransport::Udp,
                Some("tcp") => TurnTransport::Tcp,
                // `turns:...?transport=udp` is TURN over DTLS: not supported.
                None | Some(_) => return None,
            };
            Some(IceUrl::Turn {
                host,
                port,
                transport,
            })
        }
        _ => None,
    }
}

/// A TURN server with resolved addresses: the UDP one is tried first, then TCP, then TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TurnServer {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// TURN over TLS: the address and the host name of the URL (SNI and certificate check).
    pub tls: Option<(SocketAddr, String)>,
    pub username: String,
    pub password: String,
}

impl TurnServer {
    /// The address to reach this server over `transport`, if its URLs offer it.
    pub fn addr(&self, transport: TurnTransport) -> Option<SocketAddr> {
        match transport {
            TurnTransport::Udp => self.udp,
            TurnTransport::Tcp => self.tcp,
            TurnTransport::Tls => self.tls.as_ref().map(|(a, _)| *a),
        }
    }
}

/// The ICE configuration a peer connection uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IceConfig {
    pub stun: Vec<SocketAddr>,
    pub turn: Vec<TurnServer>,
}

async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(Duration::from_secs(3), lookup).await {
        Ok(Ok(mut addrs)) => {
            let all: Vec<SocketAddr> = addrs.by_ref().collect();
            all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
        }
        _ => {
            tracing::warn!(%host, "cannot resolve ICE server host, skipping it");
            None
        }
    }
}

/// Parses and resolves `ice_servers` (bad URLs and unresolvable hosts are logged and skipped).
pub(crate) async fn resolve_ice_servers(servers: &[IceServer]) -> IceConfig {
    let mut cfg = IceConfig::default();
    for s in servers {
        let mut turn = TurnServer {
            udp: None,
            tcp: None,
            tls: None,
            username: s.username.clone().unwrap_or_default(),
            password: s.credential.clone().unwrap_or_default(),
        };
        for url in &s.urls {
            match parse_url(url) {
                Some(IceUrl::Stun { host, port }) => {
                    if let Some(a) = resolve(&host, port).await {
                        if !cfg.stun.contains(&a) {
                            cfg.stun.push(a);
                        }
                    }
                }
                Some(IceUrl::Turn {
                    host,
                    port,
                    transport,
                }) => {
                    let slot = match transport {
                        TurnTransport::Udp => &mut turn.udp,
                        TurnTransport::Tcp => &mut turn.tcp,
                        TurnTransport::Tls => {
                            if turn.tls.is_none() {
                                if let Some(a) = resolve(&host, port).await {
                                    turn.tls = Some((a, host));
                                }
                            }
                            continue;
                        }
                    };
                    if slot.is_none() {
                        *slot = resolve(&host, port).await;
                    }
                }
                None => tracing::debug!(%url, "unsupported ICE server URL skipped"),
            }
        }
        if turn.udp.is_some() || turn.tcp.is_some() || turn.tls.is_some() {
            cfg.turn.push(turn);
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("stun:127.0.0.1:3478"),
            Some(IceUrl::Stun {
                host: "127.0.0.1".into(),
                port: 3478
            })
        );
        assert_eq!(
            parse_url("turn:example.org?transport=tcp"),
            Some(IceUrl::Turn {
                host: "example.org".into(),
                port: 3478,
                transport: TurnTransport::Tcp
            })
        );
        assert_eq!(
            parse_url("turn:[::1]:5000"),
            Some(IceUrl::Turn {
                host: "::1".into(),
                port: 5000,
                transport: TurnTransport::Udp
            })
        );
        assert_eq!(parse_url("turn:x:1?transport=sctp"), None);
        assert_eq!(parse_url("stun:"), None);
        assert_eq!(parse_url("garbage"), None);
        assert_eq!(parse_url("stun:host:notaport"), None);
    }

    #[test]
    fn parses_turns_urls_as_tls_over_tcp() {
        let tls = |host: &str, port| {
            Some(IceUrl::Turn {
                host: host.into(),
                port,
                transport: TurnTransport::Tls,
            })
        };
        assert_eq!(
            parse_url("turns:example.org:5349?transport=tcp"),
            tls("example.org", 5349)
        );
        // No transport: TCP; no port: 5349 (RFC 7065).
        assert_eq!(parse_url("turns:example.org"), tls("example.org", 5349));
        assert_eq!(parse_url("TURNS:Example.org:443"), tls("Example.org", 443));
        assert_eq!(parse_url("turns:[2001:db8::1]"), tls("2001:db8::1", 5349));
        assert_eq!(
            parse_url("turns:[2001:db8::1]:5350?transport=TCP"),
            tls("2001:db8::1", 5350)
        );
        // TURN over DTLS is not supported; junk is refused.
        assert_eq!(parse_url("turns:example.org:5349?transport=udp"), None);
        assert_eq!(parse_url("turns:example.org:x"), None);
        assert_eq!(parse_url("turns:"), None);
        assert_eq!(parse_url("stuns:example.org"), None);
        // Plain `turn:` keeps its default port.
        assert_eq!(
            parse_url("turn:example.org"),
            Some(IceUrl::Turn {
                host: "example.org".into(),
                port: 3478,
                transport: TurnTransport::Udp
            })
        );
    }

    #[tokio::test]
    async fn resolves_turns_with_its_host_name_for_sni() {
        let servers: Vec<IceServer> = serde_json::from_str(
            r#"[{"urls":["turns:localhost:5349?transport=tcp"],"username":"u","credential":"p"}]"#,
        )
        .unwrap();
        let cfg = resolve_ice_servers(&servers).await;
        assert_eq!(cfg.turn.len(), 1, "a turns:-only server is kept");
        let (addr, name) = cfg.turn[0].tls.clone().unwrap();
        assert_eq!(name, "localhost");
        assert_eq!(addr.port(), 5349);
        assert!(addr.ip().is_loopback());
        assert_eq!(cfg.turn[0].addr(TurnTransport::Tls), Some(addr));
        assert_eq!(cfg.turn[0].addr(TurnTransport::Udp), None);
    }

    #[tokio::test]
    async fn resolves_servers() {
        let servers: Vec<IceServer> = serde_json::from_str(
            r#"[{"urls":["stun:127.0.0.1:3478"]},
                {"urls":["turn:127.0.0.1:3478?transport=udp","turn:127.0.0.1:3479?transport=tcp","turns:127.0.0.1:5349"],
                 "username":"u","credential":"p"}]"#,
        )
        .unwrap();
        let cfg = resolve_ice_servers(&servers).await;
        assert_eq!(cfg.stun, vec!["127.0.0.1:3478".parse().unwrap()]);
        assert_eq!(cfg.turn.len(), 1);
        assert_eq!(cfg.turn[0].udp, Some("127.0.0.1:3478".parse().unwrap()));
        assert_eq!(cfg.turn[0].tcp, Some("127.0.0.1:3479".parse().unwrap()));
        assert_eq!(
            cfg.turn[0].tls,
            Some(("127.0.0.1:5349".parse().unwrap(), "127.0.0.1".to_string()))
        );
        assert_eq!(cfg.turn[0].username, "u");
    }
}
