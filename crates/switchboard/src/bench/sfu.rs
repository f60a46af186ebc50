//! `switchboard bench sfu`: synthetic publishers and subscribers in one SFU room, against `switchboard serve`
//! or Janus's videoroom plugin, measuring forwarded packets per second and per server CPU-second, frame loss,
//! one-way latency through the server, and server memory per subscriber. One JSON object on stdout.
//!
//! Every participant is a str0m `Rtc` on its own loopback UDP socket, one tokio task each, on the process's
//! runtime (one worker thread per core). Frames carry a stamp (publisher, frame number, send time on one
//! monotonic clock shared by the whole process), so receivers measure loss and latency themselves.
//! The latency is the "added" latency of the server plus the generator's own send and receive work (SRTP,
//! packetizing, scheduling) and the publisher's pacing (`--pacing-factor`: a frame's last packet leaves
//! about 10 ms after its first at the defaults), so it is an upper bound of the server's share.

mod janus;
mod pacer;
mod peer;
mod stamp;
mod stats;
mod switchboard;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use peer::{PeerSpec, Shared, SigIn, SigOut, PHASE_STOP};
use stats::PeerReport;

/// Longest measurement window.
const MAX_DURATION: u64 = 120;
const MAX_PUBLISHERS: usize = 64;
const MAX_SUBSCRIBERS: usize = 2000;
/// After the window, how long receivers may still bring in frames stamped inside it (a saturated generator
/// lags by up to a second or two).
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Options of `switchboard bench sfu`.
#[derive(Args, Debug)]
pub struct SfuBenchArgs {
    /// Publishers, each sending one VP8 track. With `--subscribers 0` and several publishers, every
    /// publisher receives every other one (an N×N room); publishers always receive each other.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers receiving every publisher.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Video bitrate per publisher, bits per second.
    #[arg(long, default_value_t = 1_500_000)]
    bitrate: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds between periodic keyframes (publishers also answer PLI/FIR at once).
    #[arg(long, default_value_t = 2.0)]
    keyframe_interval: f64,
    /// Publishers pace their video RTP like Chromium: at this × `--bitrate`, in bursts of at most 5 ms
    /// worth (0: no pacing, each frame leaves as one burst; else 1 to 20).
    #[arg(long, default_value_t = 2.5)]
    pacing_factor: f64,
    /// Also send Opus-sized audio (50 packets/s of 160 bytes) per publisher.
    #[arg(long)]
    audio: bool,
    /// Measurement window, seconds (at most 120).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Room name (default: a fresh random one).
    #[arg(long)]
    room: Option<String>,
    /// The `switchboard serve` to load (dev mode, `sfu` rooms).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Load Janus's videoroom plugin at this REST endpoint instead (e.g. http://127.0.0.1:8088/janus).
    #[arg(long)]
    janus: Option<String>,
    /// The server's process id: its CPU time over the window and its RSS before joining and during the
    /// window are reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds allowed for every participant to connect and receive media before the window starts.
    #[arg(long, default_value_t = 90)]
    setup_timeout: u64,
    /// Participants negotiating with the server at the same time (a slot is held until connected).
    #[arg(long, default_value_t = 48)]
    join_concurrency: usize,
    /// Allow a server that is not on loopback (a lab network).
    #[arg(long)]
    allow_remote: bool,
    /// Local address of the participants' UDP sockets: loopback or 198.18.0.0/15 (RFC 2544's benchmarking
    /// range, e.g. on a dummy interface), anything else with `--allow-remote`.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let auth = rest.split('/').next().unwrap_or("");
    if let Some(v6) = auth.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    auth.rsplit_once(':').map(|(h, _)| h).unwrap_or(auth)
}

/// Loopback, or RFC 2544's benchmarking range 198.18.0.0/15: Janus gathers no candidates on loopback
/// interfaces, so `bench/sfu.sh` gives it a dummy interface with such an address in a network namespace of
/// its own.
fn is_local_bind(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || (v4.octets()[0] == 198 && v4.octets()[1] & 0xfe == 18)
        }
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

fn is_loopback_host(h: &str) -> bool {
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks bounds and the loopback rule.
fn validate(a: &SfuBenchArgs) -> anyhow::Result<()> {
    if a.duration == 0 || a.duration > MAX_DURATION {
        bail!("--duration must be 1..={MAX_DURATION} seconds");
    }
    if a.publishers == 0 || a.publishers > MAX_PUBLISHERS {
        bail!("--publishers must be 1..={MAX_PUBLISHERS}");
    }
    if a.subscribers > MAX_SUBSCRIBERS {
        bail!("--subscribers must be at most {MAX_SUBSCRIBERS}");
    }
    if a.publishers == 1 && a.subscribers == 0 {
        bail!("one publisher and no subscriber forwards nothing");
    }
    if a.fps == 0 || a.fps > 120 || a.bitrate < 8_000 || a.bitrate > 50_000_000 {
        bail!("--fps must be 1..=120 and --bitrate 8000..=50000000");
    }
    if a.pacing_factor != 0.0 && !(1.0..=20.0).contains(&a.pacing_factor) {
        bail!("--pacing-factor must be 0 (no pacing) or 1..=20");
    }
    if a.setup_timeout > 300 {
        bail!("--setup-timeout must be at most 300 seconds");
    }
    let target = a.janus.as_deref().unwrap_or(&a.url);
    if !a.allow_remote && (!is_loopback_host(host_of(target)) || !is_local_bind(a.bind)) {
        bail!(
            "{target} (or --bind {}) is not loopback: pass --allow-remote for a lab network",
            a.bind
        );
    }
    Ok(())
}

struct Running {
    peers: Vec<JoinHandle<anyhow::Result<PeerReport>>>,
    signaling: Vec<JoinHandle<()>>,
}

type PeerChannels = (
    mpsc::UnboundedSender<SigIn>,
    mpsc::UnboundedReceiver<SigOut>,
    oneshot::Receiver<()>,
);

fn spawn_peer(spec: PeerSpec, shared: &Arc<Shared>, running: &mut Running) -> PeerChannels {
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (conn_tx, conn_rx) = oneshot::channel();
    running.peers.push(tokio::spawn(peer::run(
        spec,
        shared.clone(),
        in_rx,
        out_tx,
        conn_tx,
    )));
    (in_tx, out_rx, conn_rx)
}

/// Holds a join slot until the participant is connected (or for at most 30 s): the server negotiates at most
/// `--join-concurrency` participants at a time, as a real crowd trickling in would make it.
async fn until_connected(conn: oneshot::Receiver<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
}

async fn wait_until(
    what: &str,
    deadline: Instant,
    mut done: impl FnMut() -> (bool, String),
) -> anyhow::Result<()> {
    loop {
        let (ok, progress) = done();
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("setup timed out waiting for {what} ({progress})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(args: SfuBenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let shared = Arc::new(Shared::new());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.setup_timeout);
    let frame_bytes = (args.bitrate / 8 / u64::from(args.fps)) as usize;
    let spec = |publisher: Option<u32>| PeerSpec {
        publisher,
        frame_bytes,
        fps: args.fps,
        keyframe_every: ((args.keyframe_interval * f64::from(args.fps)).round() as u32).max(1),
        audio: args.audio,
        bind: args.bind,
        pacing_factor: args.pacing_factor,
    };
    let room = args
        .room
        .clone()
        .unwrap_or_else(|| format!("bench-{:08x}", rand::random::<u32>()));
    let rss_before = args.server_pid.map(stats::rss_bytes).transpose()?;
    let p = args.publishers;
    let n = args.subscribers;
    // Receivers of each publisher: the subscribers and the other publishers.
    let receivers_per_pub = n + p - 1;
    // Participants that receive something.
    let receivers = n + if p > 1 { p } else { 0 };
    let mut running = Running {
        peers: Vec::new(),
        signaling: Vec::new(),
    };
    let sem = Arc::new(Semaphore::new(args.join_concurrency.max(1)));

    let janus = match &args.janus {
        Some(url) => {
            let j = janus::Janus::connect(url).await.context("Janus session")?;
            let id = u64::from(rand::random::<u32>());
            j.create_room(id, p).await.context("Janus room")?;
            Some((j, id))
        }
        None => None,
    };

    // Publishers.
    let mut feeds = Vec::new();
    match &janus {
        None => {
            let server = client::ServerUrl::parse(&args.url)?;
            let mut joins = Vec::new();
            for i in 0..p {
                let (tx, rx, _) = spawn_peer(spec(Some(i as u32)), &shared, &mut running);
                let (server, room) = (server.clone(), room.clone());
                joins.push(tokio::spawn(async move {
                    switchboard::join(&server, &room, &format!("pub{i}"), tx, rx).await
                }));
            }
            for j in joins {
                running.signaling.push(j.await??);
            }
        }
        Some((j, id)) => {
            for i in 0..p {
                let (tx, rx, _) = spawn_peer(spec(Some(i as u32)), &shared, &mut running);
                feeds.push(
                    janus::publish(j, *id, &format!("pub{i}"), args.audio, tx, rx)
                        .await
                        .with_context(|| format!("Janus publisher {i}"))?,
                );
            }
        }
    }
    wait_until("publishers to connect", deadline, || {
        let c = shared.connected.load(Ordering::Relaxed);
        (c >= p, format!("{c}/{p} connected"))
    })
    .await?;
    tracing::info!(publishers = p, "publishers connected");

    // Subscribers (and, for Janus, the publishers' own subscriptions to each other).
    let mut joins: Vec<JoinHandle<anyhow::Result<Option<JoinHandle<()>>>>> = Vec::new();
    let server = client::ServerUrl::parse(&args.url)?;
    let mut subs: Vec<Vec<u64>> = vec![feeds.clone(); n];
    if janus.is_some() && p > 1 {
        for own in &feeds {
            subs.push(feeds.iter().copied().filter(|f| f != own).collect());
        }
    }
    let count = if janus.is_some() { subs.len() } else { n };
    for (k, sub_feeds) in subs.into_iter().enumerate().take(count) {
        let (tx, rx, conn) = spawn_peer(spec(None), &shared, &mut running);
        let permit = sem.clone().acquire_owned().await?;
        match &janus {
            None => {
                let (server, room) = (server.clone(), room.clone());
                joins.push(tokio::spawn(async move {
                    let r = switchboard::join(&server, &room, &format!("sub{k}"), tx, rx).await;
                    if r.is_ok() {
                        until_connected(conn).await;
                    }
                    drop(permit);
                    r.map(Some)
                }));
            }
            Some((j, id)) => {
                let (j, id) = (j.clone(), *id);
                joins.push(tokio::spawn(async move {
                    let r = janus::subscribe(&j, id, &sub_feeds, tx, rx).await;
                    if r.is_ok() {
                        until_connected(conn).await;
                    }
                    drop(permit);
                    r.map(|_| None)
                }));
            }
        }
    }
    for j in joins {
        if let Some(h) = j.await?.context("subscriber join")? {
            running.signaling.push(h);
        }
    }
    let total = running.peers.len();
    // Media starts once everybody is connected, so that joining (ICE, DTLS, renegotiation of hundreds of
    // participants) does not compete with forwarding; then every receiver must get frames.
    wait_until("every participant to connect", deadline, || {
        let c = shared.connected.load(Ordering::Relaxed);
        (c >= total, format!("{c}/{total} connected"))
    })
    .await?;
    shared.media_on.store(true, Ordering::Relaxed);
    wait_until("every participant to receive media", deadline, || {
        let r = shared.receiving.load(Ordering::Relaxed);
        (r >= receivers, format!("{r}/{receivers} receiving"))
    })
    .await?;
    let setup_s = started.elapsed().as_secs_f64();
    tracing::info!(setup_s, "every participant receives; measuring");
    // Settle (the first keyframe's burst, retransmissions of the start).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let me = std::process::id();
    let gen_cpu0 = stats::cpu_seconds(me)?;
    let cpu0 = args.server_pid.map(stats::cpu_seconds).transpose()?;
    let wait0 = args
        .server_pid
        .map(stats::runqueue_wait_seconds)
        .transpose()?;
    let t0 = Instant::now();
    shared
        .window_start
        .store(shared.now_ns(), Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    shared.window_end.store(shared.now_ns(), Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = args.server_pid.map(stats::cpu_seconds).transpose()?;
    let wait1 = args
        .server_pid
        .map(stats::runqueue_wait_seconds)
        .transpose()?;
    let gen_cpu1 = stats::cpu_seconds(me)?;
    let rss_after = args.server_pid.map(stats::rss_bytes).transpose()?;
    // Frames stamped inside the window still in flight: until none came for half a second (a saturated generator
    // lags: its frames are late, not lost), at most DRAIN_MAX.
    let drain_end = Instant::now() + DRAIN_MAX;
    let mut seen = shared.window_frames.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now_seen = shared.window_frames.load(Ordering::Relaxed);
        if now_seen == seen || Instant::now() >= drain_end {
            break;
        }
        seen = now_seen;
    }
    let drained_s = t0.elapsed().as_secs_f64() - window;
    shared.phase.store(PHASE_STOP, Ordering::Relaxed);

    // Only publishers send; everyone may receive.
    let mut all = PeerReport::default();
    let mut connected = 0;
    for (i, h) in running.peers.into_iter().enumerate() {
        let r = h.await?.with_context(|| format!("participant {i}"))?;
        connected += usize::from(r.connected);
        all.add(&r);
    }
    let (pubs, mut recv) = (&all, all.clone());
    for s in running.signaling {
        let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
    }
    if let Some((j, _)) = &janus {
        j.destroy().await;
    }
    recv.latencies_us.sort_unstable();
    let ms = |p: f64| stats::percentile(&recv.latencies_us, p).map(|us| f64::from(us) / 1000.0);
    let frames_expected = pubs.frames_sent * receivers_per_pub as u64;
    let packets_expected = pubs.packets_sent * receivers_per_pub as u64;
    let loss = |got: u64, want: u64| {
        if want == 0 {
            None
        } else {
            Some(100.0 * (1.0 - got as f64 / want as f64))
        }
    };
    let server_cpu = cpu0.zip(cpu1).map(|(a, b)| b - a);
    let server_wait = wait0.zip(wait1).map(|(a, b)| (b - a).max(0.0));
    let gen_cpu = gen_cpu1 - gen_cpu0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = json!({
        "target": if janus.is_some() { "janus" } else { "switchboard" },
        "room": room,
        "publishers": p,
        "subscribers": n,
        "receivers_per_publisher": receivers_per_pub,
        "participants": total,
        "connected": connected,
        "bitrate": args.bitrate,
        "fps": args.fps,
        "frame_bytes": frame_bytes,
        "pacing_factor": args.pacing_factor,
        "audio": args.audio,
        "setup_s": round(setup_s, 2),
        "duration_s": round(window, 3),
        "drained_s": round(drained_s, 2),
        "frames_sent": pubs.frames_sent,
        "packets_sent": pubs.packets_sent,
        "frames_expected": frames_expected,
        "frames_received": recv.frames_received,
        "frame_loss_pct": loss(recv.frames_received, frames_expected).map(|v| round(v, 3)),
        "packets_expected": packets_expected,
        "packets_received": recv.packets_received,
        "packet_loss_pct": loss(recv.packets_received, packets_expected).map(|v| round(v, 3)),
        "forwarded_pps": round(recv.packets_received as f64 / window, 1),
        "forwarded_mbps": round(recv.frames_received as f64 * frame_bytes as f64 * 8.0 / window / 1e6, 2),
        "server_cpu_s": server_cpu.map(|v| round(v, 2)),
        "server_cpu_pct": server_cpu.map(|v| round(100.0 * v / window, 1)),
        "server_runqueue_wait_s": server_wait.map(|v| round(v, 2)),
        "server_runqueue_wait_pct": server_wait.map(|v| round(100.0 * v / window, 1)),
        "load_average": std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().and_then(|v| v.parse::<f64>().ok())),
        "forwarded_pkts_per_cpu_s": server_cpu.filter(|c| *c > 0.0).map(|c| round(recv.packets_received as f64 / c, 0)),
        "latency_p50_ms": ms(50.0).map(|v| round(v, 3)),
        "latency_p99_ms": ms(99.0).map(|v| round(v, 3)),
        "latency_max_ms": ms(100.0).map(|v| round(v, 3)),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_per_subscriber_bytes": rss_before.zip(rss_after).map(|(a, b)| (b.saturating_sub(a)) / (total.max(1) as u64)),
        "keyframe_requests": pubs.keyframe_requests,
        "generator_cpu_pct": round(100.0 * gen_cpu / window, 1),
        "generator_cores": cores,
        "generator_saturated": gen_cpu / window > 0.9 * cores as f64,
    });
    println!("{out}");
    Ok(())
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: SfuBenchArgs,
    }

    fn parse(args: &[&str]) -> SfuBenchArgs {
        Cli::parse_from(std::iter::once("sfu").chain(args.iter().copied())).a
    }

    #[test]
    fn defaults_are_bounded_and_loopback() {
        let a = parse(&[]);
        assert_eq!(
            (a.publishers, a.subscribers, a.duration, a.bitrate),
            (1, 10, 10, 1_500_000)
        );
        validate(&a).unwrap();
    }

    #[test]
    fn remote_servers_need_allow_remote() {
        let a = parse(&["--url", "http://192.0.2.1:8080"]);
        assert!(validate(&a).is_err());
        let a = parse(&["--janus", "http://example.com:8088/janus"]);
        assert!(validate(&a).is_err());
        let a = parse(&["--url", "http://192.0.2.1:8080", "--allow-remote"]);
        validate(&a).unwrap();
        let a = parse(&["--url", "http://[::1]:8080"]);
        validate(&a).unwrap();
        validate(&parse(&["--bind", "198.19.255.1"])).unwrap();
        assert!(validate(&parse(&["--bind", "198.20.0.1"])).is_err());
        assert!(validate(&parse(&["--bind", "192.0.2.2"])).is_err());
    }

    #[test]
    fn runs_are_bounded_in_time_and_count() {
        assert!(validate(&parse(&["--duration", "121"])).is_err());
        assert!(validate(&parse(&["--duration", "0"])).is_err());
        assert!(validate(&parse(&["--publishers", "65"])).is_err());
        assert!(validate(&parse(&["--subscribers", "2001"])).is_err());
        assert!(validate(&parse(&["--subscribers", "0"])).is_err());
        validate(&parse(&["--publishers", "6", "--subscribers", "0"])).unwrap();
    }

    #[test]
    fn pacing_factor_is_off_or_one_to_twenty() {
        assert_eq!(parse(&[]).pacing_factor, 2.5);
        for ok in ["0", "1", "2.5", "20"] {
            validate(&parse(&["--pacing-factor", ok])).unwrap();
        }
        for bad in ["0.5", "-1", "20.5", "NaN", "inf"] {
            let arg = format!("--pacing-factor={bad}");
            assert!(validate(&parse(&[&arg])).is_err(), "{bad}");
        }
    }
}
