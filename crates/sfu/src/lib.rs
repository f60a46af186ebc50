//! Selective forwarding unit (SFU) on str0m, and WHIP/WHEP endpoints.
//!
//! CONTRACT (used by the `switchboard` binary; the SFU work fills in the bodies and keeps these signatures):
//! - [`SfuConfig`]: settings (`[sfu]` in the config file).
//! - [`Sfu::start`]: binds the media UDP port and spawns the SFU's tasks on the current tokio runtime.
//! - [`Sfu`] implements [`signal::MediaServer`]: the signaling hub hands it the `to: "sfu"` negotiation of
//!   participants of `sfu` rooms.
//! - [`Sfu::router`]: WHIP (`POST /whip/{room}`) and WHEP (`POST /whep/{room}`) endpoints, merged into the
//!   HTTP app by the binary.

use std::net::{IpAddr, SocketAddr};

/// SFU settings.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct SfuConfig {
    /// Run the SFU at all.
    pub enabled: bool,
    /// Address to bind the media UDP socket to.
    pub listen_ip: IpAddr,
    /// The one UDP port carrying every participant's media (0 = pick a free one).
    pub udp_port: u16,
    /// Addresses advertised as host candidates (default: `listen-ip`, when it is not unspecified).
    pub public_ip: Vec<IpAddr>,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            // Off until the SFU is implemented; then on by default.
            enabled: false,
            listen_ip: IpAddr::from([127, 0, 0, 1]),
            udp_port: 7882,
            public_ip: Vec::new(),
        }
    }
}

/// Errors starting the SFU.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("invalid SFU configuration: {0}")]
    Config(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A running SFU.
pub struct Sfu {
    udp: SocketAddr,
}

impl Sfu {
    /// Bind the media socket and start.
    pub async fn start(config: SfuConfig) -> Result<std::sync::Arc<Sfu>, SfuError> {
        let _ = config;
        Err(SfuError::Config("the SFU is not implemented yet".into()))
    }

    /// The bound media UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// WHIP/WHEP routes. `verify` checks a bearer token and returns its claims.
    pub fn router(self: &std::sync::Arc<Self>, keys: signal::KeySet) -> axum::Router {
        let _ = keys;
        axum::Router::new()
    }
}

impl signal::MediaServer for Sfu {
    fn join(
        &self,
        _room: &str,
        _participant: &str,
        _permissions: signal::protocol::Permissions,
        _sink: signal::MediaSink,
    ) {
    }
    fn signal(&self, _room: &str, _participant: &str, _msg: signal::MediaSignal) {}
    fn leave(&self, _room: &str, _participant: &str) {}
}
