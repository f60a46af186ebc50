//! `switchboard serve`: the HTTP listener (app, SDK, signaling, health, metrics) and the STUN/TURN server,
//! on embedded defaults unless configured.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::config::{self, Config, TlsMode};
use signal::{IceServer, KeySet, Signal, TokenKey};

/// The API key used in dev mode (no keys configured). Its tokens are only accepted on loopback.
pub const DEV_API_KEY: &str = "devkey";
/// The dev-mode secret, well known on purpose: `switchboard token` works against a dev server.
pub const DEV_API_SECRET: &str = "switchboard-dev-secret";

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (see docs/configuration.md).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// HTTP listen address (`http.listen`), e.g. 127.0.0.1:8080; port 0 picks a free port.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// STUN/TURN UDP+TCP port (`turn.listening-port`); 0 picks a free port.
    #[arg(long)]
    pub turn_port: Option<u16>,
    /// SFU media UDP port (`sfu.udp-port`); 0 picks a free port.
    #[arg(long)]
    pub sfu_port: Option<u16>,
    /// Do not run the STUN/TURN server (`turn.enabled = false`).
    #[arg(long)]
    pub no_turn: bool,
    /// HTTPS: `off`, `self-signed` or `files` (`http.tls`).
    #[arg(long, value_enum)]
    pub tls: Option<TlsMode>,
    /// PEM certificate for `--tls files` (`http.cert`).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// PEM key for `--tls files` (`http.key`).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Loads the configuration for `serve` (file, environment, flags).
pub fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut overrides: Vec<(&str, toml::Value)> = Vec::new();
    if let Some(a) = args.http {
        overrides.push(("http.listen", toml::Value::String(a.to_string())));
    }
    if let Some(p) = args.turn_port {
        overrides.push(("turn.listening-port", toml::Value::Integer(p.into())));
    }
    if let Some(p) = args.sfu_port {
        overrides.push(("sfu.udp-port", toml::Value::Integer(p.into())));
    }
    if args.no_turn {
        overrides.push(("turn.enabled", toml::Value::Boolean(false)));
    }
    if let Some(t) = args.tls {
        let s = match t {
            TlsMode::Off => "off",
            TlsMode::SelfSigned => "self-signed",
            TlsMode::Files => "files",
        };
        overrides.push(("http.tls", toml::Value::String(s.into())));
    }
    if let Some(c) = &args.cert {
        overrides.push(("http.cert", toml::Value::String(c.display().to_string())));
    }
    if let Some(k) = &args.key {
        overrides.push(("http.key", toml::Value::String(k.display().to_string())));
    }
    config::load(args.config.as_deref(), std::env::vars(), overrides)
}

/// The token keys for `config`: configured keys, or the dev key in dev mode.
pub fn keyset(config: &Config) -> KeySet {
    if config.dev_mode() {
        KeySet::new(vec![TokenKey::new(DEV_API_KEY, DEV_API_SECRET)])
    } else {
        KeySet::new(
            config
                .auth
                .keys
                .iter()
                .map(|(k, s)| TokenKey::new(k, s))
                .collect(),
        )
    }
}

#[derive(Clone)]
struct AppState {
    keys: KeySet,
    metrics: PrometheusHandle,
    dev: bool,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(&args)?;
    let listen = config.http.listen;
    let dev = config.dev_mode();
    if dev && !listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {listen} in dev mode: no API keys are configured, and dev tokens would let \
             anyone on the network in. Set [auth] keys in the config file (or SWITCHBOARD_AUTH_KEYS='{{mykey = \
             \"a-secret-of-16+-chars\"}}'), or listen on 127.0.0.1"
        );
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;

    // STUN/TURN.
    let mut ice_template: Vec<(Vec<String>, bool)> = Vec::new();
    let mut turn_secret = String::new();
    let turn_server = if config.turn.enabled {
        if config.turn.static_auth_secret.is_none() {
            config.turn.static_auth_secret = Some(signal::random_hex(24));
        }
        if dev
            && config.turn.allowed_peer_ip.is_empty()
            && config.turn.listening_ip.iter().all(|ip| ip.is_loopback())
        {
            // Everything is on this machine: let the relay reach local peers.
            config.turn.allowed_peer_ip.push("127.0.0.0/8".into());
            config.turn.allowed_peer_ip.push("::1".into());
        }
        turn_secret = config.turn.static_auth_secret.clone().unwrap_or_default();
        let server = turn::TurnServer::start(config.turn.clone())
            .await
            .context("cannot start the STUN/TURN server (use --no-turn to run without it)")?;
        crate::turn_cmd::print_listeners(&server);
        let host = ice_host(&config, server.udp_addrs().first().map(|a| a.ip()));
        if let Some(a) = server.udp_addrs().first() {
            ice_template.push((vec![format!("stun:{host}:{}", a.port())], false));
            let mut urls = vec![format!("turn:{host}:{}?transport=udp", a.port())];
            if let Some(t) = server.tcp_addrs().first() {
                urls.push(format!("turn:{host}:{}?transport=tcp", t.port()));
            }
            if let Some(t) = server.tls_addrs().first() {
                urls.push(format!("turns:{host}:{}?transport=tcp", t.port()));
            }
            ice_template.push((urls, true));
        }
        Some(server)
    } else {
        None
    };
    let ttl = Duration::from_secs(config.ice.credential_ttl_secs);
    let ice: signal::IceServerSource = Arc::new(move |participant: &str| {
        ice_template
            .iter()
            .map(|(urls, auth)| {
                let (username, credential) = if *auth {
                    let (u, p) =
                        turn::rest_credentials(&turn_secret, participant, ttl, SystemTime::now());
                    (Some(u), Some(p))
                } else {
                    (None, None)
                };
                IceServer {
                    urls: urls.clone(),
                    username,
                    credential,
                }
            })
            .collect::<Vec<_>>()
    });

    let keys = keyset(&config);
    let signal = Signal::new(config.signal_config(), keys.clone(), ice);
    if turn_server.is_some() {
        // TURN credentials expire after `ttl`: push fresh ones at 80 % of it (`ice_servers` message).
        signal.hub().set_ice_refresh(ttl * 4 / 5);
    }
    let state = AppState {
        keys: keys.clone(),
        metrics,
        dev,
    };
    let mut app = router(state).merge(signal.router());
    let mut media_server = None;
    if config.sfu.enabled {
        let sfu = sfu::Sfu::start(config.sfu.clone())
            .await
            .context("cannot start the SFU (set sfu.enabled = false to run without it)")?;
        println!("listening sfu-udp {}", sfu.udp_addr());
        if let Some(tcp) = sfu.tcp_addr() {
            println!("listening sfu-tcp {tcp}");
        }
        signal.hub().set_media_server(sfu.clone());
        app = app.merge(sfu.router(keys));
        media_server = Some(sfu);
    }

    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = tcp.local_addr()?;
    let tls = match config.http.tls {
        TlsMode::Off => None,
        TlsMode::SelfSigned => {
            let mut names = vec!["localhost".to_string(), local.ip().to_string()];
            if let Some(h) = &config.ice.host {
                names.push(h.clone());
            }
            Some(crate::tls::self_signed(names)?)
        }
        TlsMode::Files => {
            let (Some(c), Some(k)) = (&config.http.cert, &config.http.key) else {
                bail!("http.tls = \"files\" needs http.cert and http.key");
            };
            Some(crate::tls::config_from_files(c, k)?)
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening http {scheme}://{local}");
    if dev {
        println!(
            "dev mode: open {scheme}://{local}/room/demo in two browser tabs (API key `{DEV_API_KEY}`)"
        );
    }
    tracing::info!(%local, scheme, dev, "switchboard serving");

    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    let serving = async {
        match tls {
            // Signaling messages are small and latency-bound: no Nagle delay.
            None => axum::serve(
                tcp.tap_io(|io| {
                    let _ = io.set_nodelay(true);
                }),
                app,
            )
            .with_graceful_shutdown(shutdown)
            .await
            .context("HTTP server failed"),
            Some(cfg) => axum::serve(crate::tls::TlsListener::new(tcp, cfg)?, app)
                .with_graceful_shutdown(shutdown)
                .await
                .context("HTTPS server failed"),
        }
    };
    // The SFU's engine only stops on a bug: exit (non-zero) so that a supervisor restarts the whole server,
    // rather than serve rooms without their media plane.
    let sfu_failed = async {
        match &media_server {
            Some(sfu) => sfu.failed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = serving => r?,
        why = sfu_failed => bail!("the SFU failed ({why}): exiting"),
    }
    if let Some(t) = turn_server {
        t.shutdown().await;
    }
    Ok(())
}

fn ice_host(config: &Config, turn_ip: Option<IpAddr>) -> String {
    if let Some(h) = &config.ice.host {
        return h.clone();
    }
    let ip = match turn_ip {
        Some(ip) if !ip.is_unspecified() => ip,
        _ => config.http.listen.ip(),
    };
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(crate::web::index))
        .route("/room/{name}", get(crate::web::room))
        .route("/room/{name}/", get(crate::web::room))
        .route("/app/{file}", get(crate::web::app_file))
        .route("/sdk/{file}", get(crate::web::sdk_file))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_handler))
        .route("/dev/token", get(dev_token))
        .with_state(state)
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct DevTokenQuery {
    room: Option<String>,
    name: Option<String>,
}

async fn dev_token(State(s): State<AppState>, Query(q): Query<DevTokenQuery>) -> Response {
    if !s.dev {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let Some(room) = q.room.filter(|r| !r.is_empty() && r.len() <= 128) else {
        return (
            StatusCode::BAD_REQUEST,
            "`room` (1 to 128 characters) is required",
        )
            .into_response();
    };
    let name: String = q
        .name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "guest".into())
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let slug: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(24)
        .collect::<String>()
        .to_ascii_lowercase();
    let identity = format!(
        "{}-{}",
        if slug.is_empty() { "guest" } else { &slug },
        signal::random_hex(3)
    );
    let mut claims = signal::Claims::new(
        &identity,
        signal::VideoGrant::join(&room),
        Duration::from_secs(6 * 3600),
    );
    claims.name = Some(name);
    let Some(key) = s.keys.first() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no key").into_response();
    };
    match key.mint(&claims) {
        Ok(token) => {
            Json(serde_json::json!({ "token": token, "identity": identity })).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
