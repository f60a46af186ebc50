//! `switchboard join`: a native participant from the terminal (chat, file transfer).
//!
//! stdin lines are sent as chat to everyone; incoming chat is printed as `<name>: text` on stdout.
//! A stdin line `/send PATH` sends that file to everyone connected (like `--send-file`).
//! The path to each peer is printed when it changes: `* path to <name>: direct udp A -> B`, or
//! `* path to <name>: relayed (our TURN over udp|tcp|tls) ...` / `relayed (their TURN) ...`.
//! `--send-file` sends a file once peers are connected and waits for their checksum confirmation;
//! `--receive-dir` stores received files (after verifying their SHA-256).
//! `--relay-only` connects through TURN only; `--ice-servers JSON` replaces the server's STUN/TURN list;
//! `--ca-file PEM` trusts a CA (e.g. a self-signed certificate) for TURN over TLS (`turns:`).
//! `--publish FILE.ivf` sends a VP8 file (looped) and Opus silence; `--record DIR` writes what peers send.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use client::{ChannelKind, Room, RoomEvent, ServerUrl, SignalingState};

#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// Server URL: http://host:port (or ws://host:port/ws).
    pub url: String,
    /// Room to join (needed to fetch a dev token; a --token names its own room).
    #[arg(long)]
    pub room: Option<String>,
    /// Access token (JWT). Without it, a dev token is fetched from GET /dev/token.
    #[arg(long, env = "SWITCHBOARD_TOKEN")]
    pub token: Option<String>,
    /// Display name (for the dev token).
    #[arg(long, default_value = "cli")]
    pub name: String,
    /// Send this file to everyone once peers are connected; waits until each confirmed its SHA-256.
    #[arg(long)]
    pub send_file: Option<PathBuf>,
    /// How many peers to wait for before sending the file.
    #[arg(long, default_value_t = 1)]
    pub wait_peers: usize,
    /// Give up sending if the peers are not connected after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub wait_timeout: u64,
    /// Leave once the file was delivered (exit status 0 only if every receiver confirmed the checksum).
    #[arg(long)]
    pub exit_after_send: bool,
    /// Store received files in this directory (verified against their SHA-256).
    #[arg(long)]
    pub receive_dir: Option<PathBuf>,
    /// Only offer 127.0.0.1 as ICE host candidate.
    #[arg(long)]
    pub loopback_only: bool,
    /// Connect through TURN only (relayed candidates; the browser's iceTransportPolicy "relay").
    /// TURN is tried over UDP, then TCP, then TLS (`turns:`).
    #[arg(long, visible_alias = "relay")]
    pub relay_only: bool,
    /// Trust the CA certificate(s) in this PEM file for TURN over TLS (`turns:` URLs), in addition to the
    /// Mozilla root store — e.g. the server's own self-signed certificate (which must then not be a CA
    /// certificate: basicConstraints CA:FALSE, as rcgen makes them).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// STUN/TURN servers to use instead of the server's, as JSON like the browser's iceServers:
    /// '[{"urls":["turn:host:3478?transport=udp"],"username":"u","credential":"p"}]'.
    #[arg(long, value_name = "JSON")]
    pub ice_servers: Option<String>,
    /// Publish this VP8 IVF file as video (looped at its frame rate) plus an Opus silence track, e.g. made
    /// with `ffmpeg -f lavfi -i testsrc=size=320x240:rate=15 -t 5 -c:v libvpx -g 15 out.ivf`.
    #[arg(long, value_name = "FILE.ivf")]
    pub publish: Option<PathBuf>,
    /// Record each participant's video (VP8) to DIR/<id>-video.ivf and audio (Opus) to DIR/<id>-audio.ogg.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
}

pub async fn run(args: JoinArgs) -> anyhow::Result<()> {
    let server = ServerUrl::parse(&args.url)?;
    let ice_servers_override = match &args.ice_servers {
        Some(json) => Some(
            serde_json::from_str::<Vec<client::IceServer>>(json)
                .context("--ice-servers must be a JSON array of {urls, username, credential}")?,
        ),
        None => None,
    };
    if let Some(f) = &args.publish {
        let head = tokio::fs::read(f)
            .await
            .with_context(|| format!("cannot read {}", f.display()))?;
        anyhow::ensure!(
            head.len() >= 32 && &head[0..4] == b"DKIF" && &head[8..12] == b"VP80",
            "{} is not a VP8 IVF file (make one with: ffmpeg -f lavfi -i testsrc=size=320x240:rate=15 -t 5 -c:v libvpx -g 15 out.ivf)",
            f.display()
        );
    }
    let token = match &args.token {
        Some(t) => t.clone(),
        None => {
            let room = args
                .room
                .as_deref()
                .context("--room is required when no --token is given")?;
            let (token, _identity) = client::dev_token(&server, room, &args.name)
                .await
                .with_context(|| format!("cannot get a dev token from {}", server.http))?;
            token
        }
    };
    if let Some(dir) = &args.receive_dir {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if let Some(f) = &args.send_file {
        let meta = tokio::fs::metadata(f)
            .await
            .with_context(|| format!("cannot read {}", f.display()))?;
        anyhow::ensure!(meta.is_file(), "{} is not a file", f.display());
    }
    let options = client::RoomOptions {
        host_ips: args
            .loopback_only
            .then(|| vec!["127.0.0.1".parse().expect("valid IP literal")]),
        relay_only: args.relay_only,
        ice_servers_override,
        publish_ivf: args.publish.clone(),
        record_dir: args.record.clone(),
        extra_ca_pem: args.ca_file.clone(),
        ..Default::default()
    };
    let room = match Room::connect_with(&server.ws, &token, options).await {
        Ok(r) => Arc::new(r),
        Err(client::Error::Refused { code, message }) => {
            anyhow::bail!("the server refused to let us join ({code}): {message}")
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "joined room {} as {} ({})",
        room.name(),
        room.local_participant().display_name(),
        room.local_participant().id
    );
    let result = session(&args, room.clone()).await;
    room.leave().await;
    result
}

async fn session(args: &JoinArgs, room: Arc<Room>) -> anyhow::Result<()> {
    let mut stdin = stdin_lines();
    let mut stdin_open = true;
    let mut ready: HashSet<String> = HashSet::new();
    let mut send_pending = args.send_file.clone();
    let mut send_task: Option<tokio::task::JoinHandle<anyhow::Result<bool>>> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_timeout);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        if let Some(path) = send_pending.as_ref() {
            if ready.len() >= args.wait_peers.max(1) {
                let (room, path) = (room.clone(), path.clone());
                send_pending = None;
                send_task = Some(tokio::spawn(async move { send_file(&room, &path).await }));
            }
        }
        let waiting_to_send = send_pending.is_some();
        tokio::select! {
            _ = &mut ctrl_c => {
                eprintln!("leaving");
                return Ok(());
            }
            _ = tokio::time::sleep_until(deadline), if waiting_to_send => {
                anyhow::bail!("timed out after {} s waiting for {} peer(s) to send the file to", args.wait_timeout, args.wait_peers);
            }
            r = async { send_task.as_mut().expect("guarded").await }, if send_task.is_some() => {
                send_task = None;
                let all_ok = r.context("file sender task failed")??;
                if args.exit_after_send || !stdin_open {
                    anyhow::ensure!(all_ok, "a receiver reported a checksum mismatch");
                    return Ok(());
                }
            }
            line = stdin.recv(), if stdin_open => match line {
                Some(line) => {
                    let text = line.trim_end();
                    if let Some(path) = text.strip_prefix("/send ") {
                        let path = PathBuf::from(path.trim());
                        if send_task.is_some() || send_pending.is_some() {
                            eprintln!("! a file is already being sent");
                        } else if ready.is_empty() {
                            eprintln!("! nobody to send {} to yet", path.display());
                        } else if !tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
                            eprintln!("! {} is not a readable file", path.display());
                        } else {
                            let room = room.clone();
                            send_task = Some(tokio::spawn(async move { send_file(&room, &path).await }));
                        }
                    } else if !text.is_empty() {
                        room.send_chat(text).await?;
                    }
                }
                None => {
                    stdin_open = false;
                    let media = args.publish.is_some() || args.record.is_some();
                    if send_task.is_none() && !waiting_to_send && args.receive_dir.is_none() && !media {
                        return Ok(());
                    }
                }
            },
            ev = room.next_event() => {
                let Some(ev) = ev else { return Ok(()) };
                match ev {
                    RoomEvent::ParticipantJoined(p) => eprintln!("* {} joined", p.display_name()),
                    RoomEvent::ParticipantLeft { participant, reason } => {
                        ready.remove(&participant.id);
                        eprintln!("* {} left ({reason})", participant.display_name());
                    }
                    RoomEvent::PeerState { participant, state } => {
                        tracing::debug!(peer = %participant.display_name(), ?state, "peer connection");
                        if state == client::PeerState::Closed {
                            ready.remove(&participant.id);
                        }
                    }
                    RoomEvent::ChannelOpen { participant, channel } => {
                        if channel == ChannelKind::File {
                            eprintln!("* connected to {}", participant.display_name());
                            ready.insert(participant.id);
                        }
                    }
                    RoomEvent::Chat { from, text } => println!("{}: {text}", from.display_name()),
                    RoomEvent::FileProgress { from, name, bytes, size, .. } => {
                        if bytes == 0 {
                            eprintln!("* receiving {name} ({size} bytes) from {}", from.display_name());
                        }
                    }
                    RoomEvent::FileReceived { from, file } => {
                        store_file(args.receive_dir.as_deref(), &from, file).await;
                    }
                    RoomEvent::Signaling(SignalingState::Reconnecting) => eprintln!("* signaling lost, reconnecting"),
                    RoomEvent::Signaling(SignalingState::Connected) => {}
                    RoomEvent::Signaling(SignalingState::Disconnected) => {
                        eprintln!("* signaling disconnected");
                    }
                    RoomEvent::Error { code, message } => {
                        if matches!(code.as_str(), "no_relay" | "relay_failed") {
                            eprintln!("! {message}");
                        } else {
                            eprintln!("! server error {code}: {message}");
                        }
                        if matches!(code.as_str(), "unauthorized" | "forbidden" | "room_full" | "unsupported_protocol" | "replaced") {
                            anyhow::bail!("the server ended the session ({code}): {message}");
                        }
                    }
                    RoomEvent::LocalCandidate { participant, candidate, relay_protocol } => {
                        if let Some(proto) = relay_protocol {
                            eprintln!("* relayed candidate for {} (TURN over {proto}): {candidate}", participant.display_name());
                        } else {
                            tracing::info!(peer = %participant.display_name(), %candidate, "local candidate");
                        }
                    }
                    RoomEvent::Path { participant, path } => {
                        eprintln!("* path to {}: {path}", participant.display_name());
                    }
                    RoomEvent::ParticipantUpdated(_) | RoomEvent::Data { .. } => {}
                }
            }
        }
    }
}

/// Lines of stdin, read on a plain thread: tokio's stdin would keep the runtime from shutting down while
/// a read is pending (the process could not exit on Ctrl-C with a terminal attached).
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sends one file with a progress bar; true if every receiver confirmed it.
async fn send_file(room: &Room, path: &Path) -> anyhow::Result<bool> {
    let name = path.display().to_string();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("sending {name}"));
    let b2 = bar.clone();
    let deliveries = room
        .send_file_with_progress(path, move |sent, total| {
            b2.set_length(total);
            b2.set_position(sent);
        })
        .await
        .with_context(|| format!("sending {name}"))?;
    bar.finish_and_clear();
    let size = tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let mut all_ok = true;
    for d in &deliveries {
        if d.ok {
            println!(
                "sent {name} to {} ({size} bytes, sha256 OK)",
                d.participant.display_name()
            );
        } else {
            all_ok = false;
            println!(
                "failed to send {name} to {}: {}",
                d.participant.display_name(),
                d.error
                    .as_deref()
                    .unwrap_or("checksum mismatch at the receiver")
            );
        }
    }
    Ok(all_ok)
}

/// A file name safe to create in the receive directory.
fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

async fn store_file(
    dir: Option<&Path>,
    from: &client::ParticipantInfo,
    file: client::ReceivedFile,
) {
    let who = from.display_name();
    let n = file.data.len();
    let Some(dir) = dir else {
        let verdict = if file.checksum_ok {
            "sha256 OK"
        } else {
            "sha256 MISMATCH"
        };
        println!(
            "received {} from {who} ({n} bytes, {verdict}; not stored: no --receive-dir)",
            file.name
        );
        return;
    };
    let name = safe_name(&file.name);
    let mut path = dir.join(&name);
    let mut i = 1;
    while tokio::fs::try_exists(&path).await.unwrap_or(false) {
        path = dir.join(format!("{i}-{name}"));
        i += 1;
    }
    if let Err(e) = tokio::fs::write(&path, &file.data).await {
        eprintln!("! cannot write {}: {e}", path.display());
        return;
    }
    // Verify what is on disk, not only what arrived.
    let p2 = path.clone();
    let on_disk = tokio::task::spawn_blocking(move || client::sha256_file(&p2)).await;
    let ok = file.checksum_ok
        && matches!(&on_disk, Ok(Ok(h)) if *h == file.expected_sha256)
        && n as u64 == file.expected_size;
    if ok {
        println!(
            "received {} ({n} bytes, sha256 OK) from {who}",
            path.display()
        );
    } else {
        println!(
            "received {} ({n} bytes, sha256 MISMATCH: expected {}, got {}) from {who}",
            path.display(),
            file.expected_sha256,
            file.sha256
        );
    }
}

#[cfg(test)]
mod tests {
    use super::safe_name;

    #[test]
    fn file_names_are_sanitized() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("..\\x.bin"), "x.bin");
        assert_eq!(safe_name(".."), "file");
        assert_eq!(safe_name("a b.txt"), "a b.txt");
    }
}
