//! Signaling for Switchboard: protocol v1 types, rooms and sessions, access tokens (JWT), the WebSocket
//! endpoint.
//!
//! Mount [`Signal::router`] in an axum app to serve `GET /ws`:
//!
//! ```no_run
//! use std::sync::Arc;
//! use signal::{Signal, SignalConfig, token::{KeySet, TokenKey}};
//! # async fn run() -> std::io::Result<()> {
//! let keys = KeySet::new(vec![TokenKey::new("devkey", "secret")]);
//! let signal = Signal::new(SignalConfig::default(), keys, Arc::new(|_id: &str| Vec::new()));
//! let app = axum::Router::new().merge(signal.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! The wire protocol is documented in `docs/protocol.md`.

pub mod hub;
pub mod media;
pub mod protocol;
pub mod ratelimit;
pub mod token;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

pub use hub::{Hub, HubConfig, IceServerSource};
pub use media::{MediaServer, MediaSignal, MediaSink, SFU_ID};
pub use protocol::IceServer;
pub use token::{Claims, KeySet, TokenKey, VideoGrant};

/// `bytes` random bytes as lowercase hex (ids, resume tokens, secrets).
///
/// ```
/// let h = signal::random_hex(4);
/// assert_eq!(h.len(), 8);
/// assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
/// ```
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Signaling limits and room settings (`[limits]` and `[rooms]` in the config file).
#[derive(Debug, Clone)]
pub struct SignalConfig {
    /// Largest client message (bytes). Larger ones get `too_large`.
    pub max_message_bytes: usize,
    /// Sustained messages per second per connection.
    pub messages_per_second: f64,
    /// Burst of messages allowed above the sustained rate.
    pub burst: f64,
    /// Time allowed between opening the socket and `join`.
    pub join_timeout: Duration,
    /// A joined socket silent this long is closed (the participant enters the grace period).
    pub idle_timeout: Duration,
    /// Room settings.
    pub hub: HubConfig,
}

impl Default for SignalConfig {
    fn default() -> Self {
        SignalConfig {
            max_message_bytes: 64 * 1024,
            messages_per_second: 50.0,
            burst: 200.0,
            join_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            hub: HubConfig::default(),
        }
    }
}

/// The signaling service: token verification, the room hub and the WebSocket endpoint.
pub struct Signal {
    config: SignalConfig,
    keys: KeySet,
    hub: Arc<Hub>,
}

impl Signal {
    /// A signaling service verifying tokens with `keys` and giving participants the ICE servers from `ice`.
    pub fn new(config: SignalConfig, keys: KeySet, ice: IceServerSource) -> Arc<Signal> {
        let hub = Hub::new(config.hub.clone(), ice);
        Arc::new(Signal { config, keys, hub })
    }

    /// The room hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The token keys.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// An axum router serving `GET /ws`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/ws", get(upgrade))
            .with_state(self.clone())
    }
}

async fn upgrade(State(signal): State<Arc<Signal>>, ws: WebSocketUpgrade) -> Response {
    // The transport limit is well above the protocol limit so that oversize messages get a `too_large` error
    // instead of a closed socket.
    let transport_max = signal
        .config
        .max_message_bytes
        .saturating_mul(16)
        .max(1 << 20);
    ws.max_message_size(transport_max)
        .max_frame_size(transport_max)
        .on_upgrade(move |socket| ws::serve_socket(socket, signal))
}
