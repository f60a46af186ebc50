//! Signaling protocol v1 message types (see `docs/protocol.md`).
//!
//! Parsing is strict about the fields the server uses and tolerant of unknown fields:
//!
//! ```
//! use signal::protocol::{parse_client_message, ClientMessage};
//! let msg = parse_client_message(br#"{"type":"ping","ts":1}"#).unwrap();
//! assert!(matches!(msg, ClientMessage::Ping { .. }));
//! let err = parse_client_message(br#"{"type":"offer","to":42,"sdp":""}"#).unwrap_err();
//! assert_eq!(err.code, signal::protocol::ErrorCode::BadRequest);
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// Largest metadata object accepted, serialized (bytes).
pub const MAX_METADATA_BYTES: usize = 4096;

/// Error codes sent in `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, missing or wrong-typed field, unknown `type`.
    BadRequest,
    /// Message over the size limit.
    TooLarge,
    /// Over the message rate.
    RateLimited,
    /// A message other than `join` before joining.
    NotJoined,
    /// A second `join` on one socket.
    AlreadyJoined,
    /// Bad, forged or expired token.
    Unauthorized,
    /// A grant is missing.
    Forbidden,
    /// The room is full.
    RoomFull,
    /// `to` names nobody in the sender's room.
    UnknownParticipant,
    /// `protocol` is not supported.
    UnsupportedProtocol,
    /// The same identity joined again elsewhere; this socket is closed.
    Replaced,
    /// A server bug.
    Internal,
}

impl ErrorCode {
    /// Whether the server closes the socket after sending this error.
    pub fn closes_socket(self) -> bool {
        matches!(
            self,
            ErrorCode::Unauthorized
                | ErrorCode::Forbidden
                | ErrorCode::RoomFull
                | ErrorCode::UnsupportedProtocol
                | ErrorCode::Replaced
        )
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::UnknownParticipant => "unknown_participant",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::Replaced => "replaced",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A protocol error: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ProtocolError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Explanation for humans.
    pub message: String,
}

impl ProtocolError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ProtocolError {
        ProtocolError::new(ErrorCode::BadRequest, message)
    }
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Join a room (or resume a session).
    Join {
        /// The access token (JWT).
        token: String,
        /// Protocol version the client speaks.
        protocol: u64,
        /// Resume token from an earlier `joined`.
        resume_token: Option<String>,
        /// Initial metadata object.
        metadata: Option<Value>,
    },
    /// SDP offer for participant `to`.
    Offer { to: String, sdp: String },
    /// SDP answer for participant `to`.
    Answer { to: String, sdp: String },
    /// ICE candidate (object) or end-of-candidates (`null`) for participant `to`.
    Candidate { to: String, candidate: Value },
    /// Change display name and/or metadata.
    Update {
        name: Option<String>,
        metadata: Option<Value>,
    },
    /// Leave the room now.
    Leave,
    /// Keepalive; answered with `pong` carrying the same `ts`.
    Ping { ts: Value },
}

#[derive(Deserialize)]
struct JoinFields {
    token: String,
    protocol: u64,
    #[serde(default)]
    resume_token: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
struct SdpFields {
    to: String,
    sdp: String,
}

#[derive(Deserialize)]
struct CandidateFields {
    to: String,
    candidate: Value,
}

#[derive(Deserialize)]
struct UpdateFields {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

fn fields<T: serde::de::DeserializeOwned>(kind: &str, v: Value) -> Result<T, ProtocolError> {
    serde_json::from_value(v).map_err(|e| ProtocolError::bad(format!("bad `{kind}` message: {e}")))
}

/// Checks a metadata value: an object of at most [`MAX_METADATA_BYTES`] serialized.
pub fn check_metadata(v: &Value) -> Result<(), ProtocolError> {
    if !v.is_object() {
        return Err(ProtocolError::bad("`metadata` must be a JSON object"));
    }
    let len = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if len > MAX_METADATA_BYTES {
        return Err(ProtocolError::bad(format!(
            "`metadata` is {len} bytes, at most {MAX_METADATA_BYTES} allowed"
        )));
    }
    Ok(())
}

/// Parses one text frame from a client. Errors carry the code to send back.
pub fn parse_client_message(text: &[u8]) -> Result<ClientMessage, ProtocolError> {
    let v: Value = serde_json::from_slice(text)
        .map_err(|e| ProtocolError::bad(format!("malformed JSON: {e}")))?;
    let kind = match v.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ProtocolError::bad("`type` must be a string")),
        None if v.is_object() => return Err(ProtocolError::bad("missing `type`")),
        None => return Err(ProtocolError::bad("a message must be a JSON object")),
    };
    let msg = match kind.as_str() {
        "join" => {
            let f: JoinFields = fields(&kind, v)?;
            if let Some(m) = &f.metadata {
                check_metadata(m)?;
            }
            ClientMessage::Join {
                token: f.token,
                protocol: f.protocol,
                resume_token: f.resume_token,
                metadata: f.metadata,
            }
        }
        "offer" | "answer" => {
            let f: SdpFields = fields(&kind, v)?;
            if kind == "offer" {
                ClientMessage::Offer {
                    to: f.to,
                    sdp: f.sdp,
                }
            } else {
                ClientMessage::Answer {
                    to: f.to,
                    sdp: f.sdp,
                }
            }
        }
        "candidate" => {
            let f: CandidateFields = fields(&kind, v)?;
            if !(f.candidate.is_object() || f.candidate.is_null()) {
                return Err(ProtocolError::bad("`candidate` must be an object or null"));
            }
            ClientMessage::Candidate {
                to: f.to,
                candidate: f.candidate,
            }
        }
        "update" => {
            let f: UpdateFields = fields(&kind, v)?;
            if let Some(m) = &f.metadata {
                check_metadata(m)?;
            }
            if let Some(n) = &f.name {
                check_name(n)?;
            }
            ClientMessage::Update {
                name: f.name,
                metadata: f.metadata,
            }
        }
        "leave" => ClientMessage::Leave,
        "ping" => ClientMessage::Ping {
            ts: v.get("ts").cloned().unwrap_or(Value::Null),
        },
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(ProtocolError::bad(format!(
                "unknown message type `{shown}`"
            )));
        }
    };
    Ok(msg)
}

/// Display names: 1..=128 characters, no control characters.
pub fn check_name(n: &str) -> Result<(), ProtocolError> {
    let count = n.chars().count();
    if count == 0 || count > 128 || n.chars().any(char::is_control) {
        return Err(ProtocolError::bad(
            "`name` must be 1 to 128 characters without control characters",
        ));
    }
    Ok(())
}

/// A participant as other clients see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ParticipantInfo {
    /// Server-assigned id, unique in the room.
    pub id: String,
    /// Identity from the token (`sub`).
    pub identity: String,
    /// Display name.
    pub name: String,
    /// Metadata object.
    pub metadata: Value,
}

/// Room description in `joined`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoomInfo {
    /// Room name.
    pub name: String,
    /// `mesh`, `sfu` or `auto`.
    pub mode: String,
}

/// One ICE server entry, in the browser's `RTCIceServer` shape.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Permissions from the token's grants.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Permissions {
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
}

/// A message from the server.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `join`.
    Joined {
        protocol: u64,
        participant: ParticipantInfo,
        room: RoomInfo,
        participants: Vec<ParticipantInfo>,
        ice_servers: Vec<IceServer>,
        resume_token: String,
        resumed: bool,
        reconnect_grace_ms: u64,
        permissions: Permissions,
    },
    /// Someone joined the room.
    ParticipantJoined { participant: ParticipantInfo },
    /// Someone left (`reason`: left, timeout, replaced, kicked).
    ParticipantLeft { id: String, reason: &'static str },
    /// Someone changed name or metadata.
    ParticipantUpdated { participant: ParticipantInfo },
    /// Relayed offer.
    Offer { from: String, sdp: String },
    /// Relayed answer.
    Answer { from: String, sdp: String },
    /// Relayed candidate.
    Candidate { from: String, candidate: Value },
    /// Answer to `ping`.
    Pong { ts: Value },
    /// Fresh ICE servers (new time-limited TURN credentials), pushed before the ones in `joined` expire.
    IceServers { ice_servers: Vec<IceServer> },
    /// An error.
    Error { code: ErrorCode, message: String },
}

impl ServerMessage {
    /// Serialized JSON text.
    pub fn to_text(&self) -> String {
        // Serializing these types cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed"}"#.into()
        })
    }

    /// An `error` message from a protocol error.
    pub fn error(e: &ProtocolError) -> ServerMessage {
        ServerMessage::Error {
            code: e.code,
            message: e.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn join_with_resume_and_metadata_parses() {
        let m = parse_client_message(
            br#"{"type":"join","token":"t","protocol":1,"resume_token":"r","metadata":{"a":1},"extra":true}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                token: "t".into(),
                protocol: 1,
                resume_token: Some("r".into()),
                metadata: Some(json!({"a":1}))
            }
        );
    }

    #[test]
    fn malformed_and_wrongly_typed_messages_are_bad_requests() {
        for junk in [
            &b"{not json"[..],
            b"[]",
            b"42",
            b"{}",
            br#"{"type":7}"#,
            br#"{"type":"offer","to":42,"sdp":"x"}"#,
            br#"{"type":"offer","to":"p"}"#,
            br#"{"type":"candidate","to":"p","candidate":"str"}"#,
            br#"{"type":"update","metadata":[1]}"#,
            br#"{"type":"update","name":""}"#,
            br#"{"type":"teleport"}"#,
        ] {
            let e = parse_client_message(junk).unwrap_err();
            assert_eq!(
                e.code,
                ErrorCode::BadRequest,
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
    }

    #[test]
    fn oversize_metadata_is_refused() {
        let big = "x".repeat(MAX_METADATA_BYTES);
        let text = json!({"type":"update","metadata":{"k": big}}).to_string();
        assert_eq!(
            parse_client_message(text.as_bytes()).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn end_of_candidates_null_is_accepted() {
        let m = parse_client_message(br#"{"type":"candidate","to":"p","candidate":null}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Candidate {
                to: "p".into(),
                candidate: Value::Null
            }
        );
    }

    #[test]
    fn server_messages_serialize_with_snake_case_type_tags() {
        let t = ServerMessage::ParticipantLeft {
            id: "p_1".into(),
            reason: "timeout",
        }
        .to_text();
        assert_eq!(
            t,
            r#"{"type":"participant_left","id":"p_1","reason":"timeout"}"#
        );
        let t = ServerMessage::IceServers {
            ice_servers: vec![IceServer {
                urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                username: Some("1700000000:p_1".into()),
                credential: Some("c".into()),
            }],
        }
        .to_text();
        assert_eq!(
            t,
            r#"{"type":"ice_servers","ice_servers":[{"urls":["turn:127.0.0.1:3478?transport=udp"],"username":"1700000000:p_1","credential":"c"}]}"#
        );
        let e = ServerMessage::error(&ProtocolError::new(ErrorCode::RoomFull, "full")).to_text();
        assert_eq!(e, r#"{"type":"error","code":"room_full","message":"full"}"#);
    }
}
