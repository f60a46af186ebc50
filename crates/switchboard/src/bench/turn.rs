//! `switchboard bench turn` (work in progress).

use clap::Args;

/// Options of `switchboard bench turn`.
#[derive(Args)]
pub struct TurnBenchArgs {}

pub async fn run(_args: TurnBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("switchboard bench turn is not implemented yet")
}
