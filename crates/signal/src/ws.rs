//! The WebSocket endpoint: one task per connection, reading client messages and writing what the hub queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};

use crate::hub::{Outbound, Outbox, Seat};
use crate::media::{MediaSignal, SFU_ID};
use crate::protocol::{
    parse_client_message, ClientMessage, ErrorCode, ProtocolError, ServerMessage, PROTOCOL_VERSION,
};
use crate::ratelimit::TokenBucket;
use crate::Signal;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Consecutive rate-limit violations after which the socket is closed.
const MAX_VIOLATIONS: u32 = 10;

fn err_text(code: ErrorCode, message: impl Into<String>) -> Outbound {
    metrics::counter!("signal_errors_total", "code" => code.as_str()).increment(1);
    Outbound::Text(
        ServerMessage::error(&ProtocolError::new(code, message))
            .to_text()
            .into(),
    )
}

/// Serve one upgraded WebSocket until it closes.
pub async fn serve_socket(socket: WebSocket, signal: Arc<Signal>) {
    let conn_id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (outbox, mut rx, kill) = Outbox::new(conn_id, 1024);
    let (mut sink, mut stream) = socket.split();
    metrics::gauge!("signal_connections").increment(1.0);

    let mut writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let res = match m {
                Outbound::Text(t) => sink.send(Message::Text(Utf8Bytes::from(&*t))).await,
                Outbound::Close(code, reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: Utf8Bytes::from_static(reason),
                        })))
                        .await;
                    break;
                }
            };
            if res.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let cfg = &signal.config;
    let mut bucket = TokenBucket::new(cfg.messages_per_second, cfg.burst, Instant::now());
    let mut violations = 0u32;
    let mut seat: Option<Seat> = None;
    let opened = Instant::now();
    let mut last_seen = Instant::now();
    let mut left = false;

    loop {
        let deadline = if seat.is_none() {
            opened + cfg.join_timeout
        } else {
            last_seen + cfg.idle_timeout
        };
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = tokio::time::sleep_until(deadline.into()) => {
                let why = if seat.is_none() { "join deadline passed" } else { "idle timeout" };
                tracing::debug!(conn_id, why, "closing socket");
                outbox.push(Outbound::Close(4008, if seat.is_none() { "join timeout" } else { "idle timeout" }));
                break;
            }
            _ = kill.notified() => {
                tracing::warn!(conn_id, "closing socket of a client that does not read");
                break;
            }
        };
        let Some(Ok(msg)) = msg else { break };
        last_seen = Instant::now();
        let bytes = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                outbox.push(err_text(
                    ErrorCode::BadRequest,
                    "binary frames are not accepted; send JSON text",
                ));
                continue;
            }
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if !bucket.take(last_seen) {
            violations += 1;
            outbox.push(err_text(
                ErrorCode::RateLimited,
                format!(
                    "too many messages: at most {} per second",
                    cfg.messages_per_second
                ),
            ));
            if violations >= MAX_VIOLATIONS {
                outbox.push(Outbound::Close(4029, "rate limited"));
                break;
            }
            continue;
        }
        violations = 0;
        if bytes.len() > cfg.max_message_bytes {
            outbox.push(err_text(
                ErrorCode::TooLarge,
                format!(
                    "message of {} bytes is over the {} byte limit",
                    bytes.len(),
                    cfg.max_message_bytes
                ),
            ));
            continue;
        }
        let parsed = match parse_client_message(bytes.as_bytes()) {
            Ok(m) => m,
            Err(e) => {
                let code = if seat.is_none() && e.code == ErrorCode::BadRequest {
                    ErrorCode::BadRequest
                } else {
                    e.code
                };
                outbox.push(err_text(code, e.message));
                continue;
            }
        };
        match (&seat, parsed) {
            (_, ClientMessage::Ping { ts }) => {
                outbox.push(Outbound::Text(ServerMessage::Pong { ts }.to_text().into()));
            }
            (
                None,
                ClientMessage::Join {
                    token,
                    protocol,
                    resume_token,
                    metadata,
                },
            ) => {
                if protocol != PROTOCOL_VERSION {
                    outbox.push(err_text(
                        ErrorCode::UnsupportedProtocol,
                        format!("protocol {protocol} is not supported; this server speaks {PROTOCOL_VERSION}"),
                    ));
                    outbox.push(Outbound::Close(4002, "unsupported protocol"));
                    break;
                }
                let claims = match signal.keys.verify(&token) {
                    Ok(c) => c,
                    Err(e) => {
                        metrics::counter!("signal_auth_failures_total").increment(1);
                        outbox.push(err_text(ErrorCode::Unauthorized, e.to_string()));
                        outbox.push(Outbound::Close(4003, "unauthorized"));
                        break;
                    }
                };
                match signal
                    .hub
                    .join(&claims, resume_token.as_deref(), metadata, outbox.clone())
                {
                    Ok(s) => seat = Some(s),
                    Err(e) => {
                        let closes = e.code.closes_socket();
                        outbox.push(err_text(e.code, e.message));
                        if closes {
                            outbox.push(Outbound::Close(4003, "join refused"));
                            break;
                        }
                    }
                }
            }
            (None, _) => outbox.push(err_text(ErrorCode::NotJoined, "send `join` first")),
            (Some(_), ClientMessage::Join { .. }) => {
                outbox.push(err_text(
                    ErrorCode::AlreadyJoined,
                    "this socket has already joined",
                ));
            }
            (Some(s), ClientMessage::Offer { to, sdp }) => {
                negotiate(&signal, &outbox, s, to, MediaSignal::Offer(sdp));
            }
            (Some(s), ClientMessage::Answer { to, sdp }) => {
                negotiate(&signal, &outbox, s, to, MediaSignal::Answer(sdp));
            }
            (Some(s), ClientMessage::Candidate { to, candidate }) => {
                negotiate(&signal, &outbox, s, to, MediaSignal::Candidate(candidate));
            }
            (Some(s), ClientMessage::Update { name, metadata }) => {
                signal.hub.update(s, name, metadata);
            }
            (Some(s), ClientMessage::Leave) => {
                signal.hub.leave(s, "left");
                left = true;
                outbox.push(Outbound::Close(1000, "left"));
                break;
            }
        }
    }

    if let (Some(s), false) = (&seat, left) {
        signal.hub.disconnected(s, conn_id);
    }
    drop(outbox);
    // The writer ends when every outbox clone is gone (the hub dropped ours) or after a Close.
    if tokio::time::timeout(std::time::Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    metrics::gauge!("signal_connections").decrement(1.0);
}

/// Route an offer, answer or candidate: to the room's SFU (`"to": "sfu"`) or to another participant.
fn negotiate(signal: &Signal, outbox: &Outbox, seat: &Seat, to: String, msg: MediaSignal) {
    let res = if to == SFU_ID {
        signal.hub.media_signal(seat, msg)
    } else {
        signal
            .hub
            .relay(seat, &to, &msg.into_server_message(seat.id.clone()))
    };
    if let Err(e) = res {
        outbox.push(err_text(e.code, e.message));
    }
}
