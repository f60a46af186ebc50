//! `switchboard bench turn`: a load generator for TURN relays (ours or coturn).
//!
//! N UDP allocations are set up in pairs: allocation A binds a channel to B's relayed address and B
//! to A's, so every message crosses the server twice (client A → relay A → relay B → client B), like
//! coturn's `turnutils_uclient -y` (with Switchboard's relay short circuit the relay A → relay B hop stays
//! inside the server). The data phase runs on a few OS threads over raw non-blocking
//! sockets with `sendmmsg`/`recvmmsg` (much cheaper per message than the server), each message carrying
//! a sequence number and its send time. The result is one JSON object on stdout.

mod data;
mod setup;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use clap::Args;

use self::data::{Endpoint, Plan, ThreadReport};
use self::setup::Control;
use self::stats::{process_cpu_secs, Histogram, PAYLOAD_HEADER};

/// Most allocations one run may create.
pub const MAX_ALLOCATIONS: usize = 4000;
/// Longest data phase, seconds.
pub const MAX_DURATION: u64 = 120;
/// Largest payload per message, bytes (a typical media datagram fits).
pub const MAX_SIZE: usize = 1400;
/// Most data threads.
pub const MAX_THREADS: usize = 64;
/// Highest total rate, messages per second.
pub const MAX_RATE: u64 = 10_000_000;
/// Wait after the last send for messages still in flight.
const DRAIN: Duration = Duration::from_secs(1);

/// Options of `switchboard bench turn`.
#[derive(Args, Debug, Clone)]
pub struct TurnBenchArgs {
    /// TURN server (UDP) to load.
    #[arg(long, default_value = "127.0.0.1:3478")]
    pub server: SocketAddr,
    /// Long-term credential user name (with --password), or the REST user (with --static-auth-secret).
    #[arg(long, default_value = "alice")]
    pub user: String,
    /// Long-term credential password.
    #[arg(long)]
    pub password: Option<String>,
    /// Mint TURN REST credentials for --user with this shared secret (coturn `use-auth-secret`).
    #[arg(long = "static-auth-secret", value_name = "SECRET")]
    pub static_auth_secret: Option<String>,
    /// Number of allocations (even: they are paired).
    #[arg(long, default_value_t = 20)]
    pub allocations: usize,
    /// Seconds of sending (1..=120); at most 1 s more is spent collecting messages in flight.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Total messages per second over all allocations (0 = as fast as possible within --window).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Most messages in flight per allocation when --rate is 0.
    #[arg(long, default_value_t = 8)]
    pub window: u64,
    /// ChannelData payload bytes per message (24..=1400).
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Data-phase OS threads (allocation pairs are spread over them).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// PID of the server process: its CPU time during the data phase is reported.
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Allow a server address that is not loopback (a lab you own).
    #[arg(long = "allow-remote")]
    pub allow_remote: bool,
}

impl TurnBenchArgs {
    /// Check every bound and combination; the message says which flag is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.server.ip().is_loopback() && !self.allow_remote {
            bail!(
                "--server {} is not a loopback address: pass --allow-remote to load a server you run elsewhere",
                self.server
            );
        }
        if self.server.port() == 0 {
            bail!("--server needs a port");
        }
        match (&self.password, &self.static_auth_secret) {
            (None, None) => bail!("credentials needed: --password or --static-auth-secret"),
            (Some(_), Some(_)) => bail!("--password and --static-auth-secret are exclusive"),
            _ => {}
        }
        if self.user.is_empty() {
            bail!("--user must not be empty");
        }
        if self.allocations < 2 || self.allocations & 1 == 1 || self.allocations > MAX_ALLOCATIONS {
            bail!(
                "--allocations must be even and in 2..={MAX_ALLOCATIONS} (got {})",
                self.allocations
            );
        }
        if !(1..=MAX_DURATION).contains(&self.duration) {
            bail!(
                "--duration must be 1..={MAX_DURATION} seconds (got {})",
                self.duration
            );
        }
        if self.rate > MAX_RATE {
            bail!("--rate must be at most {MAX_RATE} (got {})", self.rate);
        }
        if self.rate == 0 && !(1..=1024).contains(&self.window) {
            bail!("--window must be 1..=1024 (got {})", self.window);
        }
        if !(PAYLOAD_HEADER..=MAX_SIZE).contains(&self.size) {
            bail!(
                "--size must be {PAYLOAD_HEADER}..={MAX_SIZE} bytes (got {})",
                self.size
            );
        }
        if self.threads == 0 || self.threads > MAX_THREADS || self.threads > self.allocations / 2 {
            bail!(
                "--threads must be 1..={MAX_THREADS} and at most one per allocation pair (got {} for {} pairs)",
                self.threads,
                self.allocations / 2
            );
        }
        if self.rate != 0 && (self.rate as f64) < self.threads as f64 {
            bail!("--rate must be at least one message per second per thread");
        }
        if let Some(pid) = self.server_pid {
            process_cpu_secs(pid).with_context(|| format!("--server-pid {pid}"))?;
        }
        Ok(())
    }

    /// The user name and password to authenticate with.
    fn credentials(&self) -> (String, String) {
        match (&self.static_auth_secret, &self.password) {
            (Some(secret), _) => turn::rest_credentials(
                secret,
                &self.user,
                Duration::from_secs(3600),
                SystemTime::now(),
            ),
            (None, Some(p)) => (self.user.clone(), p.clone()),
            (None, None) => (self.user.clone(), String::new()),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub sent: u64,
    pub received: u64,
    pub foreign: u64,
    pub io_errors: u64,
    /// Seconds from the first send to the last message received.
    pub elapsed_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Summary {
    fn from_reports(reports: &[ThreadReport]) -> Summary {
        let mut h = Histogram::new();
        let mut s = Summary {
            sent: 0,
            received: 0,
            foreign: 0,
            io_errors: 0,
            elapsed_s: 0.0,
            p50_us: 0.0,
            p99_us: 0.0,
            max_us: 0.0,
            mean_us: 0.0,
        };
        let mut last = 0u64;
        for r in reports {
            s.sent += r.sent;
            s.received += r.received;
            s.foreign += r.foreign;
            s.io_errors += r.io_errors;
            last = last.max(r.last_recv_ns);
            h.merge(&r.latency);
        }
        s.elapsed_s = last as f64 / 1e9;
        s.p50_us = h.quantile(0.5) as f64 / 1e3;
        s.p99_us = h.quantile(0.99) as f64 / 1e3;
        s.max_us = h.max() as f64 / 1e3;
        s.mean_us = h.mean() / 1e3;
        s
    }

    /// Messages sent but not received (duplicates never make this negative).
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    /// Lost messages as a percentage of those sent.
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            100.0 * self.lost() as f64 / self.sent as f64
        }
    }

    /// Received (relayed) messages per second.
    pub fn msgs_per_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.received as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// The JSON object printed for one run.
fn report_json(
    args: &TurnBenchArgs,
    s: &Summary,
    setup_s: f64,
    cpu_s: Option<f64>,
) -> serde_json::Value {
    let per_cpu = cpu_s
        .filter(|c| *c > 0.0)
        .map(|c| round(s.received as f64 / c, 0));
    serde_json::json!({
        "server": args.server.to_string(),
        "allocations": args.allocations,
        "threads": args.threads,
        "size": args.size,
        "mode": if args.rate == 0 { "saturate" } else { "rate" },
        "rate_target": args.rate,
        "window": if args.rate == 0 { Some(args.window) } else { None },
        "setup_s": round(setup_s, 3),
        "duration_s": args.duration,
        "elapsed_s": round(s.elapsed_s, 3),
        "sent": s.sent,
        "received": s.received,
        "lost": s.lost(),
        "loss_pct": round(s.loss_pct(), 3),
        "msgs_per_s": round(s.msgs_per_s(), 0),
        "sent_per_s": round(s.sent as f64 / args.duration as f64, 0),
        "latency_us": {
            "p50": round(s.p50_us, 1),
            "p99": round(s.p99_us, 1),
            "max": round(s.max_us, 1),
            "mean": round(s.mean_us, 1),
        },
        "foreign": s.foreign,
        "io_errors": s.io_errors,
        "server_cpu_s": cpu_s.map(|c| round(c, 3)),
        "msgs_per_server_cpu_s": per_cpu,
    })
}

/// One allocation on a new client socket. A server that still holds an allocation for a reused local
/// port (or saw a retransmission late, 437) gets a second and third try on other ports.
fn allocate_fresh(
    server: SocketAddr,
    user: &str,
    pass: &str,
) -> anyhow::Result<(Control, SocketAddr)> {
    let mut last = None;
    for _ in 0..3 {
        let mut c = Control::new(server, user, pass).context("binding a client socket")?;
        match c.allocate() {
            Ok(relayed) => return Ok((c, relayed)),
            Err(e) if format!("{e:#}").contains(" 437 ") => last = Some(e),
            Err(e) => return Err(e).context("Allocate"),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no allocation"))).context("Allocate")
}

/// Set up one thread's allocation pairs: endpoints `2k`/`2k+1` are partners.
fn setup_pairs(
    server: SocketAddr,
    user: &str,
    pass: &str,
    pairs: usize,
) -> anyhow::Result<Vec<Control>> {
    let mut ctl = Vec::with_capacity(pairs * 2);
    for _ in 0..pairs {
        let (a, ra) = allocate_fresh(server, user, pass)?;
        let (b, rb) = allocate_fresh(server, user, pass)?;
        ctl.push(a);
        ctl.push(b);
        let n = ctl.len();
        ctl[n - 2]
            .channel_bind(stun::CHANNEL_MIN, rb)
            .context("ChannelBind")?;
        ctl[n - 1]
            .channel_bind(stun::CHANNEL_MIN, ra)
            .context("ChannelBind")?;
    }
    Ok(ctl)
}

/// Run the whole benchmark (blocking): setup on every thread, a synchronized data phase, release.
fn run_blocking(args: &TurnBenchArgs) -> anyhow::Result<serde_json::Value> {
    let (user, pass) = args.credentials();
    let pairs = args.allocations / 2;
    let threads = args.threads;
    let per_thread_rate = args.rate as f64 / threads as f64;
    let plan = Plan {
        rate: per_thread_rate,
        window: args.window,
        size: args.size,
        duration: Duration::from_secs(args.duration),
        drain: DRAIN,
    };
    let ready = Barrier::new(threads + 1);
    let go = Barrier::new(threads + 1);
    let done = Barrier::new(threads + 1);
    let failed = AtomicBool::new(false);
    let start: OnceLock<Instant> = OnceLock::new();
    let setup_t0 = Instant::now();
    let (results, setup_s, cpu) = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for t in 0..threads {
            let my_pairs = pairs / threads + usize::from(t < pairs % threads);
            let (user, pass) = (user.as_str(), pass.as_str());
            let (ready, go, done, failed, start) = (&ready, &go, &done, &failed, &start);
            handles.push(scope.spawn(move || -> anyhow::Result<ThreadReport> {
                let ctl = setup_pairs(args.server, user, pass, my_pairs);
                if ctl.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                ready.wait();
                go.wait();
                let mut rep = ThreadReport::default();
                let ok = !failed.load(Ordering::SeqCst);
                if let (Ok(ctl), true, Some(t0)) = (&ctl, ok, start.get()) {
                    let eps: Vec<Endpoint> = ctl
                        .iter()
                        .map(|c| {
                            c.sock.set_nonblocking(true)?;
                            Ok(Endpoint {
                                sock: c.sock.try_clone()?,
                                channel: stun::CHANNEL_MIN,
                            })
                        })
                        .collect::<std::io::Result<_>>()?;
                    rep = data::run(&eps, &plan, *t0);
                }
                done.wait();
                let mut ctl = ctl?;
                for c in ctl.iter_mut() {
                    // Best effort: the allocations expire on their own otherwise.
                    let _ = c.release();
                }
                Ok(rep)
            }));
        }
        ready.wait();
        let setup_s = setup_t0.elapsed().as_secs_f64();
        let cpu0 = args.server_pid.map(process_cpu_secs);
        let _ = start.set(Instant::now());
        go.wait();
        done.wait();
        let cpu1 = args.server_pid.map(process_cpu_secs);
        let cpu = match (cpu0, cpu1) {
            (Some(Ok(a)), Some(Ok(b))) => Some(b - a),
            _ => None,
        };
        let results: Vec<anyhow::Result<ThreadReport>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("data thread panicked")))
            })
            .collect();
        (results, setup_s, cpu)
    });
    let reports = results
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("setting up allocations")?;
    let summary = Summary::from_reports(&reports);
    Ok(report_json(args, &summary, setup_s, cpu))
}

/// `switchboard bench turn`.
pub async fn run(args: TurnBenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let json = tokio::task::spawn_blocking(move || run_blocking(&args))
        .await
        .context("benchmark thread")??;
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TurnBenchArgs,
    }

    fn parse(flags: &[&str]) -> anyhow::Result<TurnBenchArgs> {
        let argv = std::iter::once("bench").chain(flags.iter().copied());
        let cli = Cli::try_parse_from(argv)?;
        cli.args.validate()?;
        Ok(cli.args)
    }

    fn err(flags: &[&str]) -> String {
        format!("{:#}", parse(flags).expect_err("must be refused"))
    }

    #[test]
    fn defaults_with_password_are_valid() {
        let a = parse(&["--password", "secret"]).expect("valid");
        assert_eq!(a.server, "127.0.0.1:3478".parse().expect("addr"));
        assert_eq!(
            (a.allocations, a.duration, a.rate, a.size),
            (20, 10, 0, 200)
        );
        assert_eq!(a.credentials(), ("alice".into(), "secret".into()));
    }

    #[test]
    fn rest_credentials_minted_from_secret() {
        let a = parse(&["--static-auth-secret", "s3", "--user", "bob"]).expect("valid");
        let (u, p) = a.credentials();
        assert!(u.ends_with(":bob"), "{u}");
        assert_eq!(p, turn::core::rest_password("s3", &u));
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_named() {
        assert!(err(&[]).contains("--password or --static-auth-secret"));
        assert!(err(&["--password", "a", "--static-auth-secret", "b"]).contains("exclusive"));
        assert!(err(&["--password", "a", "--allocations", "3"]).contains("--allocations"));
        assert!(err(&["--password", "a", "--allocations", "0"]).contains("--allocations"));
        assert!(err(&["--password", "a", "--duration", "0"]).contains("--duration"));
        assert!(err(&["--password", "a", "--duration", "121"]).contains("--duration"));
        assert!(err(&["--password", "a", "--size", "8"]).contains("--size"));
        assert!(err(&["--password", "a", "--size", "9000"]).contains("--size"));
        assert!(err(&["--password", "a", "--threads", "0"]).contains("--threads"));
        assert!(
            err(&["--password", "a", "--allocations", "2", "--threads", "2"]).contains("--threads")
        );
        assert!(err(&["--password", "a", "--window", "0"]).contains("--window"));
        assert!(err(&["--password", "a", "--rate", "99999999"]).contains("--rate"));
        assert!(err(&["--password", "a", "--server", "127.0.0.1:0"]).contains("port"));
        assert!(err(&["--password", "a", "--allocations", "x"]).contains("invalid value"));
    }

    #[test]
    fn remote_server_needs_allow_remote() {
        let e = err(&["--password", "a", "--server", "192.0.2.1:3478"]);
        assert!(e.contains("--allow-remote"), "{e}");
        parse(&[
            "--password",
            "a",
            "--server",
            "192.0.2.1:3478",
            "--allow-remote",
        ])
        .expect("allowed with --allow-remote");
        parse(&["--password", "a", "--server", "[::1]:3478"]).expect("IPv6 loopback");
    }

    #[test]
    fn server_pid_must_exist() {
        let me = std::process::id().to_string();
        parse(&["--password", "a", "--server-pid", &me]).expect("own pid");
        assert!(err(&["--password", "a", "--server-pid", "4294967"]).contains("--server-pid"));
    }

    #[test]
    fn summary_counts_loss_rate_and_latency() {
        let mut a = ThreadReport {
            sent: 1000,
            received: 990,
            last_recv_ns: 2_000_000_000,
            ..ThreadReport::default()
        };
        for _ in 0..990 {
            a.latency.record(50_000);
        }
        let mut b = ThreadReport {
            sent: 1000,
            received: 1000,
            last_recv_ns: 1_000_000_000,
            ..ThreadReport::default()
        };
        for _ in 0..1000 {
            b.latency.record(100_000);
        }
        let s = Summary::from_reports(&[a, b]);
        assert_eq!((s.sent, s.received, s.lost()), (2000, 1990, 10));
        assert!((s.loss_pct() - 0.5).abs() < 1e-9);
        assert!(
            (s.msgs_per_s() - 995.0).abs() < 1e-9,
            "over the longest thread's 2 s"
        );
        assert!((s.p50_us - 100.0).abs() < 100.0 / 32.0, "{}", s.p50_us);
        assert!((s.p99_us - 100.0).abs() < 100.0 / 32.0);
        assert!((s.mean_us - (990.0 * 50.0 + 1000.0 * 100.0) / 1990.0).abs() < 0.01);
        let args = parse(&["--password", "a"]).expect("valid");
        let j = report_json(&args, &s, 0.5, Some(2.0));
        assert_eq!(j["lost"], 10);
        assert_eq!(j["msgs_per_server_cpu_s"], 995.0);
        assert_eq!(j["mode"], "saturate");
        let j = report_json(&args, &s, 0.5, None);
        assert!(j["msgs_per_server_cpu_s"].is_null());
    }
}
