//! WHIP (RFC 9725) and WHEP endpoints.
//!
//! - `POST /whip/{room}` with `Authorization: Bearer <access token for room>` (grant `canPublish`) and an
//!   `application/sdp` offer → `201 Created`, `Location: /whip/{room}/{id}`, the answer as body.
//! - `POST /whep/{room}` likewise (grant `canSubscribe`); the offer's recvonly m-lines are fed from the
//!   room's published tracks.
//! - `DELETE` on the `Location` ends the session (same bearer token).
//!
//! The server is ICE-lite and its candidates are in the answer: no trickle (`PATCH` answers 405).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Router;
use signal::KeySet;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Command, HttpKind};

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
        .patch(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "trickle ICE is not supported: the server is ICE-lite",
            )
        })
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
                "POST, DELETE, OPTIONS",
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

async fn create_session(
    kind: HttpKind,
    State(st): State<WhipState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((status, msg)) = authorize(&st.keys, &headers, &room, kind) {
        return error(status, msg);
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/sdp")
    {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/sdp",
        );
    }
    if body.len() > MAX_SDP {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("SDP offer over {MAX_SDP} bytes"),
        );
    }
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return error(StatusCode::BAD_REQUEST, "the SDP offer is not UTF-8");
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
