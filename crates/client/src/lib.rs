//! Switchboard native client: a signaling client for protocol v1 (`docs/protocol.md`) and a mesh peer on
//! [str0m](https://docs.rs/str0m) that interoperates with the browser SDK (`web/sdk/switchboard.js`):
//! the same negotiated data channels (`data` id 0, `lossy` id 1, `file` id 2), the same chat messages
//! (`{"type":"chat","text":...,"ts":...}` on `data`) and the same file framing (16 KiB chunks between JSON
//! `start`/`end` messages, SHA-256 verified by the receiver, which answers `ack`).
//!
//! ICE is complete: host candidates, server-reflexive candidates (STUN Binding to the `stun:` URLs of
//! `joined.ice_servers`) and relayed candidates (a TURN allocation per peer connection on the `turn:`/`turns:`
//! URLs: UDP first, then TCP, then TLS (`turns:`, certificate checked against the Mozilla roots and
//! [`RoomOptions::extra_ca_pem`]) when the previous one fails), trickled to the peer as they are gathered.
//! TURN credentials are time-limited: fresh ones pushed by the server (`ice_servers` message) are used for
//! the following requests on every allocation, or — when the TURN server keeps an allocation on its first
//! username (441) — a new allocation on them replaces the old one before it expires (its candidate is
//! trickled, then an ICE restart drops the old one), so a call outlives its credentials. [`RoomOptions::relay_only`] is the
//! browser's `iceTransportPolicy: "relay"`; [`RoomOptions::ice_servers_override`] replaces the server's list
//! (e.g. with an external coturn).
//!
//! Media needs no codec: [`RoomOptions::publish_ivf`] sends a VP8 IVF file (looped) and Opus silence,
//! [`RoomOptions::record_dir`] writes what peers send to IVF (VP8) and Ogg (Opus) files.
//!
//! ```no_run
//! use client::{Room, RoomEvent};
//!
//! # async fn demo() -> Result<(), client::Error> {
//! let server = client::ServerUrl::parse("http://127.0.0.1:8080")?;
//! let (token, _identity) = client::dev_token(&server, "demo", "Rusty").await?;
//! let room = Room::connect(&server.ws, &token).await?;
//! room.send_chat("hello from Rust").await?;
//! while let Some(ev) = room.next_event().await {
//!     match ev {
//!         RoomEvent::Chat { from, text } => println!("{}: {text}", from.display_name()),
//!         RoomEvent::FileReceived { from, file } => println!("{} sent {}", from.display_name(), file.name),
//!         _ => {}
//!     }
//! }
//! room.leave().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod error;
mod file;
mod ice;
mod media;
mod peer;
mod relay;
mod room;
mod signaling;
mod tls;

pub use error::Error;
pub use file::{sha256_file, ReceivedFile, FILE_CHUNK};
pub use ice::IceServer;
pub use peer::{ChannelKind, FileDelivery, PeerPath, PeerState};
pub use room::{ConnectOptions, Room, RoomEvent, RoomOptions, SignalingState};
pub use signaling::{dev_token, CandidateInit, ParticipantInfo, ServerUrl, PROTOCOL_VERSION};
