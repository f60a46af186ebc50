//! STUN/TURN server (sans-IO core + UDP/TCP/TLS drivers) and TURN client.
//!
//! CONTRACT (used by the `switchboard` binary; the TURN work fills in the bodies, keeps the signatures):
//! - [`TurnConfig`]: every operator setting, named as coturn names them (kebab-case in TOML).
//! - [`TurnServer::start`]: binds the listeners and spawns the relay workers on the current tokio runtime.
//! - [`rest_credentials`]: mints coturn-compatible time-limited credentials (`use-auth-secret`).

mod batch;
pub mod client;
pub mod core;
pub mod policy;
mod server;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

use crate::core::{Core, CoreConfig};
use crate::policy::PeerPolicy;

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
    /// Nonce lifetime in seconds (a stale nonce gets 438). coturn: `stale-nonce` (600).
    pub stale_nonce: u64,
    /// Longest allocation lifetime a client may request, seconds. coturn: `max-allocate-lifetime` (3600).
    pub max_allocate_lifetime: u64,
    /// Channel binding lifetime, seconds. coturn: `channel-lifetime` (600).
    pub channel_lifetime: u64,
    /// Permission lifetime, seconds. coturn: `permission-lifetime` (300).
    pub permission_lifetime: u64,
    /// Relay-to-relay short circuit: data from one allocation to another allocation's relayed address on
    /// this server is delivered inside the server (same permission, policy, quota and metrics checks)
    /// instead of through two relay sockets. Only when both peers use this server. (Not in coturn.)
    pub relay_short_circuit: bool,
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
            stale_nonce: 600,
            max_allocate_lifetime: 3600,
            channel_lifetime: 600,
            permission_lifetime: 300,
            relay_short_circuit: true,
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
    shared: Arc<server::Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl TurnConfig {
    /// Validate the settings and build the sans-IO core configuration (relay addresses resolved).
    pub fn core_config(&self) -> Result<CoreConfig, TurnError> {
        let cfg_err = |m: String| TurnError::Config(m);
        if self.realm.is_empty() {
            return Err(cfg_err("realm must not be empty".into()));
        }
        if self.min_port == 0 || self.min_port > self.max_port {
            return Err(cfg_err(format!(
                "invalid relay port range {}-{}",
                self.min_port, self.max_port
            )));
        }
        if self.listening_ip.is_empty() {
            return Err(cfg_err("listening-ip must not be empty".into()));
        }
        if self.cert.is_some() != self.pkey.is_some() {
            return Err(cfg_err("cert and pkey must be set together".into()));
        }
        let secs = |n: u64, what: &str| {
            if n == 0 {
                Err(cfg_err(format!("{what} must be > 0")))
            } else {
                Ok(Duration::from_secs(n))
            }
        };
        let mut core = CoreConfig {
            realm: self.realm.clone(),
            auth_secret: self.static_auth_secret.clone().filter(|s| !s.is_empty()),
            policy: PeerPolicy::new(&self.allowed_peer_ip, &self.denied_peer_ip)
                .map_err(cfg_err)?,
            relay_v4: None,
            relay_v6: None,
            min_port: self.min_port,
            max_port: self.max_port,
            user_quota: self.user_quota,
            total_quota: self.total_quota,
            max_bps: self.max_bps,
            nonce_lifetime: secs(self.stale_nonce, "stale-nonce")?,
            max_lifetime: secs(self.max_allocate_lifetime, "max-allocate-lifetime")?,
            default_lifetime: Duration::from_secs(600),
            permission_lifetime: secs(self.permission_lifetime, "permission-lifetime")?,
            channel_lifetime: secs(self.channel_lifetime, "channel-lifetime")?,
            dont_fragment: server::dont_fragment_supported(),
            relay_short_circuit: self.relay_short_circuit,
            ..CoreConfig::default()
        };
        for u in &self.user {
            core.add_user(u).map_err(cfg_err)?;
        }
        if core.users.is_empty() && core.auth_secret.is_none() {
            return Err(cfg_err(
                "no credentials: set user or static-auth-secret".into(),
            ));
        }
        let candidates = if self.relay_ip.is_empty() {
            &self.listening_ip
        } else {
            &self.relay_ip
        };
        for ip in candidates {
            let ip = if ip.is_unspecified() {
                detect_local_ip(ip.is_ipv4())
            } else {
                Some(*ip)
            };
            match ip {
                Some(ip @ IpAddr::V4(_)) if core.relay_v4.is_none() => core.relay_v4 = Some(ip),
                Some(ip @ IpAddr::V6(_)) if core.relay_v6.is_none() => core.relay_v6 = Some(ip),
                _ => {}
            }
        }
        if core.relay_v4.is_none() && core.relay_v6.is_none() {
            return Err(cfg_err(
                "could not determine a relay address: set relay-ip".into(),
            ));
        }
        Ok(core)
    }
}

/// The address the OS would use to reach the outside (no packet is sent).
fn detect_local_ip(v4: bool) -> Option<IpAddr> {
    let (bind, target): (SocketAddr, SocketAddr) = if v4 {
        (([0, 0, 0, 0], 0).into(), ([192, 0, 2, 1], 9).into())
    } else {
        (
            SocketAddr::new(IpAddr::from([0u16; 8]), 0),
            SocketAddr::new("2001:db8::1".parse().ok()?, 9),
        )
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(target).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

fn load_tls(
    cert: &std::path::Path,
    pkey: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, TurnError> {
    use std::io::BufReader;
    let cfg_err = |m: String| TurnError::Config(m);
    let mut rd = BufReader::new(std::fs::File::open(cert)?);
    let certs = rustls_pemfile::certs(&mut rd).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(cfg_err(format!("no certificate in {}", cert.display())));
    }
    let mut rd = BufReader::new(std::fs::File::open(pkey)?);
    let key = rustls_pemfile::private_key(&mut rd)?
        .ok_or_else(|| cfg_err(format!("no private key in {}", pkey.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg_err(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| cfg_err(format!("TLS: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl TurnServer {
    /// Bind the listeners and spawn the server tasks on the current tokio runtime.
    pub async fn start(config: TurnConfig) -> Result<TurnServer, TurnError> {
        let core_cfg = config.core_config()?;
        let threads = match config.relay_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let tls_acceptor = match (&config.cert, &config.pkey) {
            (Some(c), Some(k)) => Some(load_tls(c, k)?),
            _ => None,
        };
        let mut udp_bound = Vec::new();
        let mut tcp_bound = Vec::new();
        let mut tls_bound = Vec::new();
        let (mut udp, mut tcp, mut tls) = (Vec::new(), Vec::new(), Vec::new());
        for ip in &config.listening_ip {
            let (socks, listener) = server::bind_listeners(*ip, config.listening_port, threads)?;
            let ua = socks
                .first()
                .map(|s| s.local_addr())
                .transpose()?
                .ok_or_else(|| TurnError::Config("no UDP socket bound".into()))?;
            udp.push(ua);
            tcp.push(listener.local_addr()?);
            udp_bound.push((socks, ua));
            tcp_bound.push(listener);
            if let Some(acc) = &tls_acceptor {
                let l = server::bind_tcp(SocketAddr::new(*ip, config.tls_listening_port))?;
                tls.push(l.local_addr()?);
                tls_bound.push((l, acc.clone()));
            }
        }
        let core = Core::new(core_cfg, Instant::now());
        let shared = server::Shared::new(core);
        let tasks = server::spawn_all(&shared, udp_bound, tcp_bound, tls_bound);
        Ok(TurnServer {
            udp,
            tcp,
            tls,
            shared,
            tasks,
        })
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
    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.shared.allocation_count()
    }
    /// Stop all listeners and relays.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// coturn-compatible TURN REST credentials: username `"<unix expiry>:<user>"`,
/// password `base64(HMAC-SHA1(secret, username))`.
pub fn rest_credentials(
    secret: &str,
    user: &str,
    ttl: Duration,
    now: SystemTime,
) -> (String, String) {
    let expiry = (now + ttl)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let username = format!("{expiry}:{user}");
    let password = core::rest_password(secret, &username);
    (username, password)
}
