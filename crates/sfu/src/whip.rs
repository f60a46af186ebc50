//! WHIP (RFC 9725) and WHEP endpoints.
//!
//! - `POST /whip/{room}` with `Authorization: Bearer <access token for room>` (grant `canPublish`) and an
//!   `application/sdp` offer → `201 Created`, `Location: /whip/{room}/{id}`, the answer as body.
//! - `POST /whep/{room}` likewise (grant `canSubscribe`); the offer's recvonly m-lines are fed from the
//!   room's published tracks.
//! - `DELETE` on the `Location` ends the session (same bearer token).
//! - `PATCH` on the `Location` with an `application/trickle-ice-sdpfrag` body (same bearer token) adds the
//!   client's trickled candidates (204). New ICE credentials in it ask for an ICE restart, which this server
//!   does not do (422). The server is ICE-lite and all its candidates are in the answer, so clients need not
//!   trickle at all.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Router;
use signal::KeySet;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Command, HttpKind, PatchResult};

/// Largest SDP offer accepted.
const MAX_SDP: usize = 64 * 1024;
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct WhipState {
    tx: mpsc::UnboundedSender<Command>,
    keys: KeySet,
}

pub(crate) fn router(tx: mpsc::UnboundedSender<Command>, keys: KeySet) -> Router {
    let state = WhipState { tx, keys };
    let session = |kind: HttpKind| -> MethodRouter<WhipState> {
        axum::routing::delete(
            move |s: State<WhipState>, p: Path<(String, String)>, h: HeaderMap| {
                delete_session(kind, s, p, h)
            },
        )
        .patch(
            move |s: State<WhipState>, p: Path<(String, String)>, h: HeaderMap, b: Bytes| {
                patch_session(kind, s, p, h, b)
            },
        )
        .options(options)
    };
    Router::new()
        .route(
            "/whip/{room}",
            post(
                |s: State<WhipState>, p: Path<String>, h: HeaderMap, b: Bytes| {
                    create_session(HttpKind::Whip, s, p, h, b)
                },
            )
            .options(options),
        )
        .route("/whip/{room}/{id}", session(HttpKind::Whip))
        .route(
            "/whep/{room}",
            post(
                |s: State<WhipState>, p: Path<String>, h: HeaderMap, b: Bytes| {
                    create_session(HttpKind::Whep, s, p, h, b)
                },
            )
            .options(options),
        )
        .route("/whep/{room}/{id}", session(HttpKind::Whep))
        .with_state(state)
}

async fn options() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "POST, PATCH, DELETE, OPTIONS",
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Content-Type",
            ),
            (header::ACCESS_CONTROL_EXPOSE_HEADERS, "Location"),
        ],
    )
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into(),
    )
        .into_response()
}

/// Checks the bearer token: valid, for `room`, with the grant `kind` needs.
fn authorize(
    keys: &KeySet,
    headers: &HeaderMap,
    room: &str,
    kind: HttpKind,
) -> Result<(), (StatusCode, String)> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| (StatusCode::UNAUTHORIZED, "missing bearer token".to_string()))?;
    let claims = keys
        .verify(token)
        .map_err(|e| (StatusCode::UNAUTHORIZED, format!("invalid token: {e}")))?;
    let g = &claims.video;
    if g.room.as_deref() != Some(room) || !g.room_join {
        return Err((
            StatusCode::FORBIDDEN,
            "the token does not grant this room".to_string(),
        ));
    }
    let allowed = match kind {
        HttpKind::Whip => g.can_publish.unwrap_or(true),
        HttpKind::Whep => g.can_subscribe.unwrap_or(true),
    };
    if !allowed {
        return Err((
            StatusCode::FORBIDDEN,
            "the token does not grant this (publish/subscribe)".to_string(),
        ));
    }
    Ok(())
}

/// Checks the request's token (see [`authorize`]), then its body: of type `content_type`, at most [`MAX_SDP`]
/// bytes, UTF-8. The error status and message otherwise.
fn checked_body<'b>(
    st: &WhipState,
    headers: &HeaderMap,
    room: &str,
    kind: HttpKind,
    body: &'b [u8],
    content_type: &str,
) -> Result<&'b str, (StatusCode, String)> {
    authorize(&st.keys, headers, room, kind)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.trim().to_ascii_lowercase().starts_with(content_type) {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected Content-Type: {content_type}"),
        ));
    }
    if body.len() > MAX_SDP {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_SDP} bytes"),
        ));
    }
    std::str::from_utf8(body).map_err(|_| (StatusCode::BAD_REQUEST, "the body is not UTF-8".into()))
}

async fn create_session(
    kind: HttpKind,
    State(st): State<WhipState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let offer = match checked_body(&st, &headers, &room, kind, &body, "application/sdp") {
        Ok(text) => text.to_owned(),
        Err((status, msg)) => return error(status, msg),
    };
    let (reply, rx) = oneshot::channel();
    let cmd = Command::HttpOffer {
        kind,
        room: room.clone(),
        offer,
        reply,
    };
    if st.tx.send(cmd).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the SFU is not running");
    }
    match tokio::time::timeout(ENGINE_TIMEOUT, rx).await {
        Ok(Ok(Ok(session))) => {
            let prefix = match kind {
                HttpKind::Whip => "whip",
                HttpKind::Whep => "whep",
            };
            let location = format!("/{prefix}/{}/{}", urlencode(&room), session.id);
            (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, "application/sdp".to_string()),
                    (header::LOCATION, location),
                    (
                        header::HeaderName::from_static("accept-patch"),
                        "application/trickle-ice-sdpfrag".to_string(),
                    ),
                    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".to_string()),
                    (
                        header::ACCESS_CONTROL_EXPOSE_HEADERS,
                        "Location".to_string(),
                    ),
                ],
                session.answer,
            )
                .into_response()
        }
        Ok(Ok(Err(msg))) => error(StatusCode::BAD_REQUEST, msg),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "the SFU did not answer"),
    }
}

async fn delete_session(
    kind: HttpKind,
    State(st): State<WhipState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, msg)) = authorize(&st.keys, &headers, &room, kind) {
        return error(status, msg);
    }
    let (reply, rx) = oneshot::channel();
    if st
        .tx
        .send(Command::HttpDelete {
            kind,
            room,
            id,
            reply,
        })
        .is_err()
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the SFU is not running");
    }
    match tokio::time::timeout(ENGINE_TIMEOUT, rx).await {
        Ok(Ok(true)) => {
            (StatusCode::OK, [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")]).into_response()
        }
        Ok(Ok(false)) => error(StatusCode::NOT_FOUND, "no such session"),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "the SFU did not answer"),
    }
}

/// The ICE part of an SDP fragment (RFC 8840) or offer: the first `a=ice-ufrag`, and each `a=candidate:` line
/// (without `a=`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SdpFrag {
    pub ufrag: Option<String>,
    pub candidates: Vec<String>,
}

/// Most candidates taken from one fragment.
const MAX_FRAG_CANDIDATES: usize = 64;

impl SdpFrag {
    pub(crate) fn parse(text: &str) -> SdpFrag {
        let mut f = SdpFrag::default();
        for line in text.lines().map(str::trim) {
            if let Some(u) = line.strip_prefix("a=ice-ufrag:") {
                f.ufrag.get_or_insert_with(|| u.trim().to_owned());
            } else if let Some(c) = line.strip_prefix("a=") {
                if c.starts_with("candidate:") && f.candidates.len() < MAX_FRAG_CANDIDATES {
                    f.candidates.push(c.to_owned());
                }
            }
        }
        f
    }
}

async fn patch_session(
    kind: HttpKind,
    State(st): State<WhipState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = match checked_body(
        &st,
        &headers,
        &room,
        kind,
        &body,
        "application/trickle-ice-sdpfrag",
    ) {
        Ok(text) => text,
        Err((status, msg)) => return error(status, msg),
    };
    let (reply, rx) = oneshot::channel();
    let cmd = Command::HttpPatch {
        kind,
        room,
        id,
        frag: SdpFrag::parse(text),
        reply,
    };
    if st.tx.send(cmd).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the SFU is not running");
    }
    match tokio::time::timeout(ENGINE_TIMEOUT, rx).await {
        Ok(Ok(PatchResult::Applied)) => (
            StatusCode::NO_CONTENT,
            [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        )
            .into_response(),
        Ok(Ok(PatchResult::NotFound)) => error(StatusCode::NOT_FOUND, "no such session"),
        Ok(Ok(PatchResult::IceRestart)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ICE restart is not supported: start a new session (the server is ICE-lite)",
        ),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "the SFU did not answer"),
    }
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_fragment_gives_the_ufrag_and_the_candidates() {
        let frag = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
                    a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n\
                    a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw network-id 2\r\n\
                    a=end-of-candidates\r\n";
        let f = SdpFrag::parse(frag);
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.candidates.len(), 2);
        assert!(f.candidates[0].starts_with("candidate:1387637174 1 udp"));
        assert_eq!(
            SdpFrag::parse("garbage\n\u{0}a=candidate"),
            SdpFrag::default()
        );
        let many: String = (0..200)
            .map(|i| format!("a=candidate:{i} 1 udp 1 192.0.2.1 {i} typ host\n"))
            .collect();
        assert_eq!(
            SdpFrag::parse(&many).candidates.len(),
            MAX_FRAG_CANDIDATES,
            "bounded"
        );
    }
}
