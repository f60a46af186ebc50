//! The `switchboard` binary: `serve`, `turn`, `token`, `join`, `bench`.

mod bench;
mod config;
mod join_cmd;
mod serve;
mod tls;
mod token_cmd;
mod turn_cmd;
mod web;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: str0m allocates buffers per RTP packet (SRTP output ~1.2 KB, larger
/// than glibc's per-thread cache serves), which glibc takes from and returns to its bins each time;
/// mimalloc's per-thread free pages make the SFU's forwarding ~10 % cheaper per packet (bench/RESULTS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "WebRTC signaling, STUN/TURN and SFU in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything: app, SDK, signaling, STUN/TURN (embedded defaults, no config needed).
    Serve(serve::ServeArgs),
    /// Run a standalone STUN/TURN server (coturn-compatible flags).
    Turn(turn_cmd::TurnArgs),
    /// Mint an access token for a room.
    Token(token_cmd::TokenArgs),
    /// Join a room as a native participant (terminal chat, file transfer, media).
    Join(join_cmd::JoinArgs),
    /// Load generators for benchmarks (TURN relay, SFU); bounded, loopback by default.
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace: these are messages for users.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Turn(args) => turn_cmd::run(args).await,
        Command::Token(args) => token_cmd::run(args),
        Command::Join(args) => join_cmd::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}
