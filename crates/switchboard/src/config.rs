//! Configuration: embedded defaults, then a TOML file, then `SWITCHBOARD_<SECTION>_<KEY>` environment
//! variables, then command-line flags (each overrides the previous). Every setting is listed in
//! `docs/configuration.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Sections of the config file (environment variables for other sections are ignored).
const SECTIONS: &[&str] = &["http", "auth", "limits", "rooms", "turn", "ice", "sfu"];

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub rooms: RoomsConfig,
    pub turn: turn::TurnConfig,
    pub ice: IceConfig,
    pub sfu: sfu::SfuConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP(S) listener: app, SDK, `/ws`, `/healthz`, `/metrics`.
    pub listen: SocketAddr,
    /// `off`, `self-signed` (rcgen, for LAN testing) or `files` (`cert` + `key`).
    pub tls: TlsMode,
    /// PEM certificate chain (with `tls = "files"`).
    pub cert: Option<PathBuf>,
    /// PEM private key (with `tls = "files"`).
    pub key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: TlsMode::Off,
            cert: None,
            key: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Off,
    SelfSigned,
    Files,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys and their secrets (`key = "secret"`). Empty = dev mode (loopback only).
    pub keys: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub messages_per_second: f64,
    pub burst: f64,
    pub join_timeout_secs: u64,
    pub idle_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 64 * 1024,
            messages_per_second: 50.0,
            burst: 200.0,
            join_timeout_secs: 10,
            idle_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RoomsConfig {
    pub max_participants: usize,
    pub reconnect_grace_secs: u64,
    /// Mode of new rooms: `mesh` (peer to peer), `sfu` (through the SFU) or `auto` (mesh, moved to the SFU
    /// when it grows past `auto-threshold` participants).
    pub default_mode: String,
    /// Per-room modes overriding `default-mode`, e.g. `{ townhall = "sfu" }`.
    pub modes: BTreeMap<String, String>,
    /// An `auto` room moves to the SFU when a join makes it larger than this.
    pub auto_threshold: usize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            max_participants: 16,
            reconnect_grace_secs: 20,
            default_mode: "mesh".into(),
            modes: BTreeMap::new(),
            auto_threshold: 4,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct IceConfig {
    /// Host name or address put in the `stun:`/`turn:` URLs given to clients (default: the first TURN
    /// listening address, or the HTTP listener's address when that is unspecified).
    pub host: Option<String>,
    /// Lifetime of the TURN credentials handed out in `joined`.
    pub credential_ttl_secs: u64,
}

impl Default for IceConfig {
    fn default() -> Self {
        IceConfig {
            host: None,
            credential_ttl_secs: 6 * 3600,
        }
    }
}

impl Config {
    /// Dev mode: no API keys configured; a well-known dev key is used and `/dev/token` is served.
    pub fn dev_mode(&self) -> bool {
        self.auth.keys.is_empty()
    }

    pub fn signal_config(&self) -> signal::SignalConfig {
        signal::SignalConfig {
            max_message_bytes: self.limits.max_message_bytes,
            messages_per_second: self.limits.messages_per_second,
            burst: self.limits.burst,
            join_timeout: Duration::from_secs(self.limits.join_timeout_secs),
            idle_timeout: Duration::from_secs(self.limits.idle_timeout_secs),
            hub: signal::HubConfig {
                max_participants: self.rooms.max_participants,
                reconnect_grace: Duration::from_secs(self.rooms.reconnect_grace_secs),
                default_mode: self.rooms.default_mode.clone(),
                room_modes: self
                    .rooms
                    .modes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                auto_threshold: self.rooms.auto_threshold,
            },
        }
    }

    /// Checks that make no sense to start with.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.limits.max_message_bytes < 1024 {
            bail!("limits.max-message-bytes must be at least 1024");
        }
        if self.limits.messages_per_second <= 0.0 || self.limits.burst < 1.0 {
            bail!("limits.messages-per-second must be > 0 and limits.burst >= 1");
        }
        if self.rooms.max_participants == 0 {
            bail!("rooms.max-participants must be at least 1");
        }
        for mode in std::iter::once(&self.rooms.default_mode).chain(self.rooms.modes.values()) {
            if !matches!(mode.as_str(), "mesh" | "sfu" | "auto") {
                bail!("room mode `{mode}` is unknown: use `mesh`, `sfu` or `auto`");
            }
            if mode != "mesh" && !self.sfu.enabled {
                bail!("a room mode is `{mode}` but the SFU is disabled (sfu.enabled = false)");
            }
        }
        if self.rooms.auto_threshold == 0 {
            bail!("rooms.auto-threshold must be at least 1");
        }
        if self.http.tls == TlsMode::Files && (self.http.cert.is_none() || self.http.key.is_none())
        {
            bail!("http.tls = \"files\" needs http.cert and http.key");
        }
        for (k, s) in &self.auth.keys {
            if s.len() < 16 {
                bail!("the secret of API key `{k}` is shorter than 16 characters");
            }
        }
        Ok(())
    }
}

/// Reads `path` (if any), applies environment variables and `overrides` (dotted keys, e.g. `http.listen`).
pub fn load(
    path: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
    overrides: Vec<(&str, toml::Value)>,
) -> anyhow::Result<Config> {
    let mut table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("config file {} is not valid TOML", p.display()))?
        }
        None => toml::Table::new(),
    };
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("SWITCHBOARD_") else {
            continue;
        };
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        let section = section.to_ascii_lowercase();
        if !SECTIONS.contains(&section.as_str()) {
            continue;
        }
        let key = key.to_ascii_lowercase().replace('_', "-");
        set(&mut table, &section, &key, env_value(&value));
    }
    for (dotted, value) in overrides {
        let (section, key) = dotted.split_once('.').unwrap_or(("", dotted));
        set(&mut table, section, key, value);
    }
    let config: Config = toml::Value::Table(table)
        .try_into()
        .context("invalid configuration")?;
    config.validate()?;
    Ok(config)
}

/// An environment value as TOML: a TOML literal if it parses as one (`42`, `true`, `["a", "b"]`), else a
/// string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_8080_in_dev_mode() {
        let c = load(None, std::iter::empty(), vec![]).unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(c.dev_mode());
        assert_eq!(c.turn.listening_port, 3478);
    }

    #[test]
    fn file_then_env_then_flags_override_in_order() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[http]\nlisten = \"127.0.0.1:9000\"\n[turn]\nrealm = \"file\"\nuser-quota = 3\n",
        )
        .unwrap();
        let env = vec![
            ("SWITCHBOARD_TURN_REALM".to_string(), "env".to_string()),
            ("SWITCHBOARD_TURN_USER_QUOTA".to_string(), "7".to_string()),
            ("SWITCHBOARD_BIN".to_string(), "/ignored".to_string()),
        ];
        let c = load(
            Some(&file),
            env.into_iter(),
            vec![("http.listen", toml::Value::String("127.0.0.1:9001".into()))],
        )
        .unwrap();
        assert_eq!(c.http.listen.port(), 9001);
        assert_eq!(c.turn.realm, "env");
        assert_eq!(c.turn.user_quota, 7);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_setting_is_a_clear_error() {
        let env = vec![("SWITCHBOARD_TURN_REALMM".to_string(), "x".to_string())];
        let err = load(None, env.into_iter(), vec![]).unwrap_err();
        assert!(format!("{err:#}").contains("realmm"), "{err:#}");
    }

    #[test]
    fn auto_mode_and_threshold() {
        let env = vec![
            (
                "SWITCHBOARD_ROOMS_DEFAULT_MODE".to_string(),
                "auto".to_string(),
            ),
            (
                "SWITCHBOARD_ROOMS_AUTO_THRESHOLD".to_string(),
                "6".to_string(),
            ),
        ];
        let c = load(None, env.into_iter(), vec![]).unwrap();
        assert_eq!(c.signal_config().hub.default_mode, "auto");
        assert_eq!(c.signal_config().hub.auto_threshold, 6);
        assert_eq!(
            load(None, std::iter::empty(), vec![])
                .unwrap()
                .rooms
                .auto_threshold,
            4
        );
        let bad = vec![(
            "SWITCHBOARD_ROOMS_DEFAULT_MODE".to_string(),
            "mcuu".to_string(),
        )];
        assert!(load(None, bad.into_iter(), vec![]).is_err());
    }

    #[test]
    fn bandwidth_estimation_takes_a_name_or_a_bool() {
        let mode = |v: &str| {
            let env = vec![(
                "SWITCHBOARD_SFU_BANDWIDTH_ESTIMATION".to_string(),
                v.to_string(),
            )];
            load(None, env.into_iter(), vec![]).map(|c| c.sfu.bandwidth_estimation)
        };
        use sfu::BandwidthEstimation as B;
        assert_eq!(mode("twcc").unwrap(), B::Twcc);
        assert_eq!(mode("loss").unwrap(), B::Loss);
        assert_eq!(mode("true").unwrap(), B::Loss);
        assert_eq!(mode("false").unwrap(), B::Off);
        assert_eq!(mode("\"off\"").unwrap(), B::Off);
        let err = mode("gcc").unwrap_err();
        assert!(format!("{err:#}").contains("\"twcc\""), "{err:#}");
        let default = load(None, std::iter::empty(), vec![]).unwrap();
        assert_eq!(default.sfu.bandwidth_estimation, B::Loss);
    }

    #[test]
    fn short_api_secret_is_refused() {
        let env = vec![(
            "SWITCHBOARD_AUTH_KEYS".to_string(),
            "{k = \"short\"}".to_string(),
        )];
        assert!(load(None, env.into_iter(), vec![]).is_err());
    }
}
