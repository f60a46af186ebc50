//! `switchboard bench sfu` (work in progress).

use clap::Args;

/// Options of `switchboard bench sfu`.
#[derive(Args)]
pub struct SfuBenchArgs {}

pub async fn run(_args: SfuBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("switchboard bench sfu is not implemented yet")
}
