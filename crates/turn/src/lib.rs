//! STUN/TURN server (sans-IO core + UDP/TCP/TLS drivers) and TURN client.
//!
//! CONTRACT (used by the `switchboard` binary; the TURN work fills in the bodies, keeps the signatures):
//! - [`TurnConfig`]: every operator setting, named as coturn names them (kebab-case in TOML).
//! - [`TurnServer::start`]: binds the listeners and spawns the relay workers on the current tokio runtime.
//! - [`rest_credentials`]: mints coturn-compatible time-limited credentials (`use-auth-secret`).

pub mod client;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// TURN/STUN server settings. Field names follow coturn's options.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct TurnConfig {
    /// Run the STUN/TURN server at all.
    pub enabled: bool,
    /// Addresses to listen on (UDP and TCP). coturn: `listening-ip`.
    pub listening_ip: Vec<IpAddr>,
    /// UDP+TCP port. coturn: `listening-port` (3478). 0 picks a free port.
    pub listening_port: u16,
    /// TLS port (used only when `cert` and `pkey` are set). coturn: `tls-listening-port` (5349).
    pub tls_listening_port: u16,
    /// Address advertised in XOR-RELAYED-ADDRESS and relays bound to. coturn: `relay-ip`.
    pub relay_ip: Vec<IpAddr>,
    /// Realm for long-term credentials. coturn: `realm`.
    pub realm: String,
    /// Shared secret for TURN REST credentials. coturn: `static-auth-secret` (implies `use-auth-secret`).
    pub static_auth_secret: Option<String>,
    /// Static users as `name:password`. coturn: `user`.
    pub user: Vec<String>,
    /// Relay port range. coturn: `min-port` / `max-port`.
    pub min_port: u16,
    pub max_port: u16,
    /// Peer ranges allowed even if the default policy refuses them (e.g. `127.0.0.1`, `10.0.0.0/8`).
    pub allowed_peer_ip: Vec<String>,
    /// Extra peer ranges refused.
    pub denied_peer_ip: Vec<String>,
    /// Allocations per user (0 = unlimited). coturn: `user-quota`.
    pub user_quota: u32,
    /// Allocations in total (0 = unlimited). coturn: `total-quota`.
    pub total_quota: u32,
    /// Per-allocation bandwidth cap in bytes/s (0 = none). coturn: `max-bps`.
    pub max_bps: u64,
    /// Relay worker threads (0 = number of cores). coturn: `relay-threads`.
    pub relay_threads: usize,
    /// TLS certificate chain and private key (PEM). coturn: `cert` / `pkey`.
    pub cert: Option<PathBuf>,
    pub pkey: Option<PathBuf>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: true,
            listening_ip: vec![IpAddr::from([127, 0, 0, 1])],
            listening_port: 3478,
            tls_listening_port: 5349,
            relay_ip: Vec::new(),
            realm: "switchboard".into(),
            static_auth_secret: None,
            user: Vec::new(),
            min_port: 49152,
            max_port: 65535,
            allowed_peer_ip: Vec::new(),
            denied_peer_ip: Vec::new(),
            user_quota: 0,
            total_quota: 0,
            max_bps: 0,
            relay_threads: 0,
            cert: None,
            pkey: None,
        }
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("invalid TURN configuration: {0}")]
    Config(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A running STUN/TURN server.
pub struct TurnServer {
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
}

impl TurnServer {
    /// Bind the listeners and spawn the server tasks on the current tokio runtime.
    pub async fn start(config: TurnConfig) -> Result<TurnServer, TurnError> {
        let _ = config;
        Err(TurnError::Config("TURN server not implemented yet".into()))
    }
    /// Bound UDP listener addresses (useful when the port was 0).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }
    /// Bound TCP listener addresses.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }
    /// Bound TLS listener addresses.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls
    }
    /// Stop all listeners and relays.
    pub async fn shutdown(self) {}
}

/// coturn-compatible TURN REST credentials: username `"<unix expiry>:<user>"`,
/// password `base64(HMAC-SHA1(secret, username))`.
pub fn rest_credentials(secret: &str, user: &str, ttl: Duration, now: SystemTime) -> (String, String) {
    let _ = (secret, user, ttl, now);
    (String::new(), String::new())
}
