//! Signaling protocol v1 (see `docs/protocol.md`): message types, URL handling and the WebSocket join.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Error;

/// The protocol version this client speaks.
///
/// ```
/// assert_eq!(client::PROTOCOL_VERSION, 1);
/// ```
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest signaling message accepted from the server (the server's own limit is 64 KiB).
const MAX_SERVER_MESSAGE: usize = 256 * 1024;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A participant of a room as the server describes it.
///
/// ```
/// let p: client::ParticipantInfo =
///     serde_json::from_str(r#"{"id":"p_1","identity":"alice","name":"Alice","metadata":{}}"#).unwrap();
/// assert_eq!(p.display_name(), "Alice");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Server-assigned participant id, unique in the room (`p_...`).
    pub id: String,
    /// Identity from the access token (`sub`).
    #[serde(default)]
    pub identity: String,
    /// Display name, if any.
    #[serde(default)]
    pub name: Option<String>,
    /// Free-form metadata object.
    #[serde(default)]
    pub metadata: serde_json::Value,
}

impl ParticipantInfo {
    /// The name to show: `name`, else `identity`, else `id`.
    ///
    /// ```
    /// let p = client::ParticipantInfo { id: "p_1".into(), identity: "bob".into(), name: None, metadata: Default::default() };
    /// assert_eq!(p.display_name(), "bob");
    /// ```
    pub fn display_name(&self) -> &str {
        match &self.name {
            Some(n) if !n.is_empty() => n,
            _ if !self.identity.is_empty() => &self.identity,
            _ => &self.id,
        }
    }
}

/// An ICE candidate as carried by the `candidate` message (browser `RTCIceCandidateInit` in snake_case).
///
/// ```
/// let c = client::CandidateInit {
///     candidate: "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host".into(),
///     sdp_mid: Some("0".into()), sdp_mline_index: Some(0), username_fragment: None,
/// };
/// assert!(serde_json::to_string(&c).unwrap().contains("sdp_mline_index"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateInit {
    /// The `candidate:...` attribute string.
    pub candidate: String,
    /// Media stream id the candidate belongs to.
    #[serde(default)]
    pub sdp_mid: Option<String>,
    /// Index of the m-line the candidate belongs to.
    #[serde(default)]
    pub sdp_mline_index: Option<u32>,
    /// ICE username fragment of the generation the candidate belongs to.
    #[serde(default)]
    pub username_fragment: Option<String>,
}

/// Messages from the client to the server.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ClientMsg {
    Join {
        token: String,
        protocol: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
    },
    Offer {
        to: String,
        sdp: String,
    },
    Answer {
        to: String,
        sdp: String,
    },
    Candidate {
        to: String,
        candidate: Option<CandidateInit>,
    },
    Ping {
        ts: u64,
    },
    Leave,
}

/// The payload of `joined`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Joined {
    pub participant: ParticipantInfo,
    #[serde(default)]
    pub participants: Vec<ParticipantInfo>,
    #[serde(default)]
    pub resume_token: Option<String>,
    #[serde(default)]
    pub resumed: bool,
    #[serde(default)]
    pub room: Option<RoomInfo>,
    #[serde(default)]
    pub ice_servers: Vec<crate::IceServer>,
}

/// Room description from `joined`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RoomInfo {
    #[serde(default)]
    pub name: String,
}

/// Messages from the server to the client.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ServerMsg {
    Joined(Box<Joined>),
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        id: String,
        #[serde(default)]
        reason: Option<String>,
    },
    ParticipantUpdated {
        participant: ParticipantInfo,
    },
    Offer {
        from: String,
        sdp: String,
    },
    Answer {
        from: String,
        sdp: String,
    },
    Candidate {
        from: String,
        #[serde(default)]
        candidate: Option<CandidateInit>,
    },
    Pong {},
    /// Fresh ICE servers (renewed TURN credentials).
    IceServers {
        #[serde(default)]
        ice_servers: Vec<crate::IceServer>,
    },
    Error {
        code: String,
        #[serde(default)]
        message: String,
    },
    #[serde(other)]
    Unknown,
}

/// Parses a text frame from the server; `None` (logged) for garbage.
pub(crate) fn parse_server_msg(text: &str) -> Option<ServerMsg> {
    if text.len() > MAX_SERVER_MESSAGE {
        tracing::warn!(len = text.len(), "signaling message too large, dropped");
        return None;
    }
    match serde_json::from_str(text) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "malformed signaling message, dropped");
            None
        }
    }
}

/// Server endpoints derived from a user-supplied URL.
///
/// ```
/// let e = client::ServerUrl::parse("http://127.0.0.1:8080").unwrap();
/// assert_eq!(e.ws, "ws://127.0.0.1:8080/ws");
/// assert_eq!(e.http, "http://127.0.0.1:8080");
/// let e = client::ServerUrl::parse("ws://example.test/ws").unwrap();
/// assert_eq!(e.http, "http://example.test");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The WebSocket endpoint, e.g. `ws://127.0.0.1:8080/ws`.
    pub ws: String,
    /// The HTTP origin, e.g. `http://127.0.0.1:8080`.
    pub http: String,
    /// `host:port` (port defaulted from the scheme).
    pub authority: String,
    /// Whether TLS is used (`https`/`wss`).
    pub tls: bool,
}

impl ServerUrl {
    /// Understands `http(s)://host[:port][/path]`, `ws(s)://host[:port][/path]` and bare `host:port`.
    /// An empty path (or `/`) becomes `/ws` for the WebSocket endpoint.
    ///
    /// ```
    /// assert!(client::ServerUrl::parse("ftp://x").is_err());
    /// assert_eq!(client::ServerUrl::parse("127.0.0.1:9").unwrap().ws, "ws://127.0.0.1:9/ws");
    /// ```
    pub fn parse(url: &str) -> Result<ServerUrl, Error> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("http".to_string(), url),
        };
        let tls = match scheme.as_str() {
            "http" | "ws" => false,
            "https" | "wss" => true,
            _ => return Err(bad("the scheme must be http, https, ws or wss")),
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = if path.is_empty() || path == "/" {
            "/ws"
        } else {
            path
        };
        let authority = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !host.ends_with(']')
        {
            host.to_string()
        } else {
            format!("{host}:{}", if tls { 443 } else { 80 })
        };
        Ok(ServerUrl {
            ws: format!("{}://{host}{path}", if tls { "wss" } else { "ws" }),
            http: format!("{}://{host}", if tls { "https" } else { "http" }),
            authority,
            tls,
        })
    }
}

/// Opens the WebSocket, sends `join`, and waits for `joined` (or the refusal).
pub(crate) async fn open_and_join(
    url: &str,
    token: &str,
    resume_token: Option<String>,
) -> Result<(Ws, Joined), Error> {
    let connect = tokio_tungstenite::connect_async(url);
    let (mut ws, _resp) = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Err(_) => {
            return Err(Error::Unreachable {
                url: url.to_string(),
                reason: "connection timed out".into(),
            })
        }
        Ok(Err(e)) => {
            return Err(Error::Unreachable {
                url: url.to_string(),
                reason: e.to_string(),
            })
        }
        Ok(Ok(x)) => x,
    };
    send(
        &mut ws,
        &ClientMsg::Join {
            token: token.to_string(),
            protocol: PROTOCOL_VERSION,
            resume_token,
        },
    )
    .await?;
    let wait = async {
        while let Some(frame) = ws.next().await {
            let frame = frame.map_err(|e| Error::Unreachable {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
            let Message::Text(text) = frame else {
                if frame.is_close() {
                    break;
                }
                continue;
            };
            match parse_server_msg(text.as_str()) {
                Some(ServerMsg::Joined(j)) => return Ok(*j),
                Some(ServerMsg::Error { code, message }) => {
                    return Err(Error::Refused { code, message })
                }
                _ => continue,
            }
        }
        Err(Error::ClosedBeforeJoin)
    };
    let joined = tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .map_err(|_| Error::Timeout("waiting for joined"))??;
    Ok((ws, joined))
}

/// Sends one message as a text frame.
pub(crate) async fn send(ws: &mut Ws, msg: &ClientMsg) -> Result<(), Error> {
    let text = serde_json::to_string(msg).map_err(|e| Error::Protocol(e.to_string()))?;
    ws.send(Message::text(text))
        .await
        .map_err(|e| Error::Protocol(format!("signaling send failed: {e}")))
}

/// Percent-encodes a query component.
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A dev-mode token from `GET /dev/token?room=&name=` (returns `(token, identity)`).
///
/// Plain `http://` only (dev mode binds loopback). Fails with [`Error::Unreachable`] when the server cannot
/// be reached and [`Error::Protocol`] when it answers something else than a token (e.g. 404 outside dev mode).
///
/// ```no_run
/// # async fn f() -> Result<(), client::Error> {
/// let server = client::ServerUrl::parse("http://127.0.0.1:8080")?;
/// let (token, identity) = client::dev_token(&server, "demo", "Alice").await?;
/// # Ok(()) }
/// ```
pub async fn dev_token(
    server: &ServerUrl,
    room: &str,
    name: &str,
) -> Result<(String, String), Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = format!(
        "{}/dev/token?room={}&name={}",
        server.http,
        encode_query(room),
        encode_query(name)
    );
    if server.tls {
        return Err(Error::InvalidUrl {
            url,
            reason: "fetching a dev token over https is not supported; pass --token".into(),
        });
    }
    let unreachable = |e: std::io::Error| Error::Unreachable {
        url: url.clone(),
        reason: e.to_string(),
    };
    let fut = async {
        let mut stream = TcpStream::connect(&server.authority)
            .await
            .map_err(unreachable)?;
        let host = server.http.trim_start_matches("http://");
        let req = format!(
            "GET /dev/token?room={}&name={} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n\r\n",
            encode_query(room),
            encode_query(name)
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(unreachable)?;
        let mut buf = Vec::new();
        stream
            .take(1024 * 1024)
            .read_to_end(&mut buf)
            .await
            .map_err(unreachable)?;
        Ok::<_, Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| Error::Timeout("GET /dev/token"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Protocol("GET /dev/token: malformed HTTP response".into()))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| Error::Protocol("GET /dev/token: malformed status line".into()))?;
    if status != 200 {
        return Err(Error::Protocol(format!(
            "GET {url}: HTTP {status} (is the server in dev mode? otherwise pass --token)"
        )));
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    #[derive(Deserialize)]
    struct Tok {
        token: String,
        #[serde(default)]
        identity: String,
    }
    let tok: Tok = serde_json::from_str(body.trim())
        .map_err(|e| Error::Protocol(format!("GET /dev/token: bad JSON: {e}")))?;
    Ok((tok.token, tok.identity))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_messages() {
        let m = parse_server_msg(r#"{"type":"offer","from":"p_a","sdp":"v=0"}"#);
        assert!(matches!(m, Some(ServerMsg::Offer { .. })));
        let m = parse_server_msg(r#"{"type":"candidate","from":"p_a","candidate":null}"#);
        assert!(matches!(
            m,
            Some(ServerMsg::Candidate {
                candidate: None,
                ..
            })
        ));
        let m = parse_server_msg(r#"{"type":"whatever","x":1}"#);
        assert!(matches!(m, Some(ServerMsg::Unknown)));
        assert!(parse_server_msg("nope").is_none());
        let m = parse_server_msg(
            r#"{"type":"ice_servers","ice_servers":[{"urls":"turn:127.0.0.1:3478","username":"1:p","credential":"c"}]}"#,
        );
        assert!(
            matches!(m, Some(ServerMsg::IceServers { ice_servers }) if ice_servers[0].username.as_deref() == Some("1:p"))
        );
        let m = parse_server_msg(r#"{"type":"pong","ts":1}"#);
        assert!(matches!(m, Some(ServerMsg::Pong {})));
    }

    #[test]
    fn join_serializes() {
        let s = serde_json::to_string(&ClientMsg::Join {
            token: "t".into(),
            protocol: 1,
            resume_token: None,
        })
        .unwrap();
        assert_eq!(s, r#"{"type":"join","token":"t","protocol":1}"#);
        let s = serde_json::to_string(&ClientMsg::Leave).unwrap();
        assert_eq!(s, r#"{"type":"leave"}"#);
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
