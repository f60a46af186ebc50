//! `switchboard token`: mint an access token (JWT) for a room.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// Room the token may join.
    #[arg(long)]
    pub room: String,
    /// Participant identity (`sub`).
    #[arg(long)]
    pub identity: String,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Metadata string copied to the participant.
    #[arg(long)]
    pub metadata: Option<String>,
    /// Lifetime: `90s`, `30m`, `6h`, `7d` (default 6h).
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// May publish media.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub can_publish: bool,
    /// May receive media.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub can_subscribe: bool,
    /// May send data-channel messages.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub can_publish_data: bool,
    /// Config file whose `[auth] keys` sign the token (default: the dev key).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// API key to sign with (when several are configured).
    #[arg(long)]
    pub api_key: Option<String>,
}

/// Parses `90s`, `30m`, `6h`, `7d` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 30m, 6h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("unknown unit `{unit}` in `{s}` (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let config = crate::config::load(args.config.as_deref(), std::env::vars(), vec![])?;
    let keys = crate::serve::keyset(&config);
    let key = match &args.api_key {
        Some(k) => config
            .auth
            .keys
            .get(k)
            .map(|s| signal::TokenKey::new(k, s))
            .with_context(|| format!("no API key `{k}` in the configuration"))?,
        None => keys.first().cloned().context("no API key configured")?,
    };
    let grant = signal::VideoGrant {
        room: Some(args.room.clone()),
        room_join: true,
        can_publish: Some(args.can_publish),
        can_subscribe: Some(args.can_subscribe),
        can_publish_data: Some(args.can_publish_data),
    };
    let mut claims = signal::Claims::new(&args.identity, grant, args.ttl);
    claims.name = args.name;
    claims.metadata = args.metadata;
    println!("{}", key.mint(&claims)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(21600));
        assert!(parse_duration("6x").is_err());
        assert!(parse_duration("h").is_err());
    }
}
