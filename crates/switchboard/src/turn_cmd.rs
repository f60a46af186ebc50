//! `switchboard turn`: a standalone STUN/TURN server with coturn's flag names.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use turn::{TurnConfig, TurnServer};

#[derive(clap::Args, Debug)]
pub struct TurnArgs {
    /// Address to listen on (UDP and TCP); repeatable.
    #[arg(long = "listening-ip", value_name = "IP")]
    pub listening_ip: Vec<IpAddr>,
    /// UDP+TCP port (0 = any free port).
    #[arg(long = "listening-port", default_value_t = 3478)]
    pub listening_port: u16,
    /// TLS port (used with --cert and --pkey).
    #[arg(long = "tls-listening-port", default_value_t = 5349)]
    pub tls_listening_port: u16,
    /// Realm for long-term credentials.
    #[arg(long, default_value = "switchboard")]
    pub realm: String,
    /// Static user `NAME:PASSWORD`; repeatable.
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    pub user: Vec<String>,
    /// Shared secret for TURN REST credentials (coturn `use-auth-secret`).
    #[arg(long = "static-auth-secret", value_name = "SECRET")]
    pub static_auth_secret: Option<String>,
    /// Lowest relay port.
    #[arg(long = "min-port", default_value_t = 49152)]
    pub min_port: u16,
    /// Highest relay port.
    #[arg(long = "max-port", default_value_t = 65535)]
    pub max_port: u16,
    /// Address relays bind to and advertise; repeatable.
    #[arg(long = "relay-ip", value_name = "IP")]
    pub relay_ip: Vec<IpAddr>,
    /// Peer address/CIDR/range allowed even if denied by default; repeatable.
    #[arg(long = "allowed-peer-ip", value_name = "RANGE")]
    pub allowed_peer_ip: Vec<String>,
    /// Peer address/CIDR/range refused; repeatable.
    #[arg(long = "denied-peer-ip", value_name = "RANGE")]
    pub denied_peer_ip: Vec<String>,
    /// Allocations per user (0 = unlimited).
    #[arg(long = "user-quota", default_value_t = 0)]
    pub user_quota: u32,
    /// Allocations in total (0 = unlimited).
    #[arg(long = "total-quota", default_value_t = 0)]
    pub total_quota: u32,
    /// Per-allocation bandwidth cap in bytes/s (0 = none).
    #[arg(long = "max-bps", default_value_t = 0)]
    pub max_bps: u64,
    /// UDP listener workers per address (0 = number of cores).
    #[arg(long = "relay-threads", default_value_t = 0)]
    pub relay_threads: usize,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PATH")]
    pub pkey: Option<PathBuf>,
    /// Nonce lifetime in seconds.
    #[arg(long = "stale-nonce", default_value_t = 600)]
    pub stale_nonce: u64,
    /// Relay data between two allocations of this server through the sockets (turns off the
    /// relay-to-relay short circuit, `relay-short-circuit = false`).
    #[arg(long = "no-relay-short-circuit")]
    pub no_relay_short_circuit: bool,
}

impl TurnArgs {
    /// The server configuration these flags describe.
    pub fn to_config(&self) -> TurnConfig {
        let defaults = TurnConfig::default();
        TurnConfig {
            enabled: true,
            listening_ip: if self.listening_ip.is_empty() {
                defaults.listening_ip.clone()
            } else {
                self.listening_ip.clone()
            },
            listening_port: self.listening_port,
            tls_listening_port: self.tls_listening_port,
            relay_ip: self.relay_ip.clone(),
            realm: self.realm.clone(),
            static_auth_secret: self.static_auth_secret.clone(),
            user: self.user.clone(),
            min_port: self.min_port,
            max_port: self.max_port,
            allowed_peer_ip: self.allowed_peer_ip.clone(),
            denied_peer_ip: self.denied_peer_ip.clone(),
            user_quota: self.user_quota,
            total_quota: self.total_quota,
            max_bps: self.max_bps,
            relay_threads: self.relay_threads,
            cert: self.cert.clone(),
            pkey: self.pkey.clone(),
            stale_nonce: self.stale_nonce,
            relay_short_circuit: !self.no_relay_short_circuit,
            ..defaults
        }
    }
}

/// Prints `listening turn-udp|turn-tcp|turn-tls ADDR` for every bound listener (tests and scripts read these).
pub fn print_listeners(server: &TurnServer) {
    let kinds = [
        ("turn-udp", server.udp_addrs()),
        ("turn-tcp", server.tcp_addrs()),
        ("turn-tls", server.tls_addrs()),
    ];
    for (kind, addrs) in kinds {
        for a in addrs {
            println!("listening {kind} {a}");
        }
    }
}

pub async fn run(args: TurnArgs) -> anyhow::Result<()> {
    let server = TurnServer::start(args.to_config())
        .await
        .context("starting the TURN server")?;
    print_listeners(&server);
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    server.shutdown().await;
    Ok(())
}
