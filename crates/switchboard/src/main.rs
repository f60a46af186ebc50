//! The `switchboard` binary: `serve`, `turn`, `token`.

mod turn_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "switchboard", version, about = "WebRTC signaling, STUN/TURN and SFU in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a standalone STUN/TURN server (coturn-compatible flags).
    Turn(turn_cmd::TurnArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Turn(args) => turn_cmd::run(args).await,
    }
}
