//! `switchboard bench`: load generators for the TURN relay and the SFU.
//!
//! Every run is bounded in time and count and talks to loopback (or an address the operator passes
//! explicitly for a lab); results are printed as one JSON object on stdout so scripts in `bench/` can
//! compare servers side by side.

mod sfu;
mod turn;

use clap::{Args, Subcommand};

/// `switchboard bench <target>`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand)]
enum Target {
    /// Relay load through a TURN server (ours or coturn): N allocations exchanging ChannelData.
    Turn(turn::TurnBenchArgs),
    /// Synthetic publishers and subscribers in one SFU room (ours or Janus's videoroom).
    Sfu(sfu::SfuBenchArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.target {
        Target::Turn(a) => turn::run(a).await,
        Target::Sfu(a) => sfu::run(a).await,
    }
}
