//! The room session: signaling task, participants, one peer task per remote participant.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_tungstenite::tungstenite::Message;

use crate::file::{FileControl, FILE_CHUNK};
use crate::peer::{
    default_host_ips, ChannelKind, FileDelivery, FileFrame, FileJob, PeerCmd, PeerConfig,
    PeerEvent, PeerHandle, PeerOut, PeerPath, PeerState,
};
use crate::signaling::{self, ClientMsg, Joined, ParticipantInfo, ServerMsg, Ws};
use crate::{Error, ReceivedFile};

const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Error codes after which reconnecting with the same credentials fails the same way.
const FATAL_CODES: [&str; 5] = [
    "unauthorized",
    "forbidden",
    "room_full",
    "unsupported_protocol",
    "replaced",
];

/// State of the signaling connection.
///
/// ```
/// assert_ne!(client::SignalingState::Connected, client::SignalingState::Reconnecting);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalingState {
    /// Joined (or resumed).
    Connected,
    /// The socket dropped; reconnecting and resuming. Peer connections keep running.
    Reconnecting,
    /// Given up (left, or a fatal error).
    Disconnected,
}

/// Something that happened in the room. Read them with [`Room::next_event`].
///
/// ```
/// # fn handle(ev: client::RoomEvent) {
/// match ev {
///     client::RoomEvent::ParticipantJoined(p) => println!("{} joined", p.display_name()),
///     client::RoomEvent::Chat { from, text } => println!("{}: {text}", from.display_name()),
///     _ => {}
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// Someone is in the room (the roster at join time, then newcomers).
    ParticipantJoined(ParticipantInfo),
    /// Someone left; `reason` is `left`, `timeout`, `replaced`, `kicked` (or `reconnected` when our own
    /// session had to start over).
    ParticipantLeft {
        /// Who left.
        participant: ParticipantInfo,
        /// Why.
        reason: String,
    },
    /// A participant changed name or metadata.
    ParticipantUpdated(ParticipantInfo),
    /// The peer connection to a participant changed state.
    PeerState {
        /// The remote participant.
        participant: ParticipantInfo,
        /// The new state.
        state: PeerState,
    },
    /// A data channel to a participant opened (after [`ChannelKind::File`] opened, files can be sent).
    ChannelOpen {
        /// The remote participant.
        participant: ParticipantInfo,
        /// Which channel.
        channel: ChannelKind,
    },
    /// A chat message (`{"type":"chat","text":...}` on the `data` channel).
    Chat {
        /// The sender.
        from: ParticipantInfo,
        /// The text.
        text: String,
    },
    /// Any other message on the `data` or `lossy` channel.
    Data {
        /// The sender.
        from: ParticipantInfo,
        /// The channel it came on.
        channel: ChannelKind,
        /// Whether it was sent as binary (else UTF-8 text).
        binary: bool,
        /// The payload.
        data: Vec<u8>,
    },
    /// Progress of a file being received (about every 256 KiB).
    FileProgress {
        /// The sender.
        from: ParticipantInfo,
        /// Transfer id.
        id: String,
        /// File name.
        name: String,
        /// Bytes received so far.
        bytes: u64,
        /// Announced size.
        size: u64,
    },
    /// A complete file; the sender already got our `ack`.
    FileReceived {
        /// The sender.
        from: ParticipantInfo,
        /// The file and its checksum verdict.
        file: ReceivedFile,
    },
    /// A local ICE candidate was gathered for the connection to a participant (server-reflexive via
    /// STUN, relayed via TURN; host candidates are not reported).
    LocalCandidate {
        /// The remote participant.
        participant: ParticipantInfo,
        /// The `candidate:...` SDP attribute (`typ srflx`, `typ relay`).
        candidate: String,
        /// For a relayed candidate: how the TURN server is reached (`udp`, `tcp` or `tls`).
        relay_protocol: Option<String>,
    },
    /// The candidate pair carrying media and data to a participant changed (checked every second):
    /// direct, or relayed through TURN. ICE may start on a relayed pair and move to a direct one once
    /// hole punching succeeds.
    Path {
        /// The remote participant.
        participant: ParticipantInfo,
        /// The pair now in use.
        path: PeerPath,
    },
    /// The signaling connection changed state.
    Signaling(SignalingState),
    /// An `error` from the server, or a local problem worth showing.
    Error {
        /// Protocol error code (`rate_limited`, `unauthorized`, ...).
        code: String,
        /// Message.
        message: String,
    },
}

/// Options of [`Room::connect_with`].
///
/// ```
/// let opts = client::RoomOptions { host_ips: Some(vec!["127.0.0.1".parse().unwrap()]), ..Default::default() };
/// assert!(opts.reconnect);
/// ```
#[derive(Debug, Clone)]
pub struct RoomOptions {
    /// Local addresses for host candidates; `None`: 127.0.0.1 and every non-loopback interface address.
    pub host_ips: Option<Vec<IpAddr>>,
    /// Largest file accepted from a peer (bytes); bigger announcements fail their checksum.
    pub max_file_bytes: u64,
    /// Reconnect and resume when the signaling socket drops.
    pub reconnect: bool,
    /// Use only relayed (TURN) candidates, as the browser's `iceTransportPolicy: "relay"`.
    pub relay_only: bool,
    /// STUN/TURN servers to use instead of the `ice_servers` the signaling server sends (e.g. an external
    /// coturn). `Some(vec![])` disables STUN and TURN.
    pub ice_servers_override: Option<Vec<crate::IceServer>>,
    /// Publish this VP8 IVF file as a video track (looped at its frame rate), with an Opus silence track.
    pub publish_ivf: Option<std::path::PathBuf>,
    /// Record every participant's VP8 video to `<dir>/<participant id>-video.ivf` and Opus audio to
    /// `<dir>/<participant id>-audio.ogg`.
    pub record_dir: Option<std::path::PathBuf>,
    /// A PEM file of CA certificates to trust for TURN over TLS (`turns:`) in addition to the Mozilla root
    /// store (e.g. a server's self-signed certificate).
    pub extra_ca_pem: Option<std::path::PathBuf>,
    /// Refresh TURN allocations, permissions and channels at least this often (default: the allocation at
    /// half its lifetime, channels every 4 minutes; clamped to 1 s..4 min). Short periods show at once whether
    /// renewed credentials are accepted; mostly for tests.
    pub turn_refresh: Option<Duration>,
}

/// Another name for [`RoomOptions`].
pub type ConnectOptions = RoomOptions;

impl Default for RoomOptions {
    fn default() -> Self {
        RoomOptions {
            host_ips: None,
            max_file_bytes: 1 << 30,
            reconnect: true,
            relay_only: false,
            ice_servers_override: None,
            publish_ivf: None,
            record_dir: None,
            extra_ca_pem: None,
            turn_refresh: None,
        }
    }
}

type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

enum RoomCmd {
    Send {
        kind: ChannelKind,
        binary: bool,
        data: Vec<u8>,
        reply: oneshot::Sender<usize>,
    },
    Peers(oneshot::Sender<Vec<(ParticipantInfo, mpsc::UnboundedSender<PeerCmd>)>>),
    Participants(oneshot::Sender<Vec<ParticipantInfo>>),
    Leave(oneshot::Sender<()>),
    DropSignaling,
}

/// A joined room. Cheap to share behind an `Arc`: every method takes `&self`.
///
/// ```no_run
/// # async fn f() -> Result<(), client::Error> {
/// let room = client::Room::connect("ws://127.0.0.1:8080/ws", "<jwt>").await?;
/// println!("joined as {}", room.local_participant().id);
/// room.leave().await;
/// # Ok(()) }
/// ```
pub struct Room {
    cmd: mpsc::UnboundedSender<RoomCmd>,
    events: Mutex<mpsc::UnboundedReceiver<RoomEvent>>,
    local: ParticipantInfo,
    room_name: String,
}

impl Room {
    /// Connects to the WebSocket endpoint `url` (`ws://host:port/ws`; an `http://` URL is converted) and joins
    /// with `token`. Resolves once `joined` arrived; fails with [`Error::Refused`] on a bad token and
    /// [`Error::Unreachable`] when the server cannot be reached.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), client::Error> {
    /// let room = client::Room::connect("http://127.0.0.1:8080", "<jwt>").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, token: &str) -> Result<Room, Error> {
        Self::connect_with(url, token, RoomOptions::default()).await
    }

    /// [`Room::connect`] with options.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), client::Error> {
    /// let opts = client::RoomOptions { reconnect: false, ..Default::default() };
    /// let room = client::Room::connect_with("ws://127.0.0.1:8080/ws", "<jwt>", opts).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(url: &str, token: &str, options: RoomOptions) -> Result<Room, Error> {
        let ws_url = signaling::ServerUrl::parse(url)?.ws;
        let tls = crate::tls::client_config(options.extra_ca_pem.as_deref())?;
        let (publish, tasks) = match &options.publish_ivf {
            Some(p) => {
                let (tx, tasks) = crate::media::start_publisher(p)?;
                (Some(tx), Some(tasks))
            }
            None => (None, None),
        };
        if let Some(d) = &options.record_dir {
            std::fs::create_dir_all(d)?;
        }
        let media = crate::media::MediaConfig {
            publish,
            record_dir: options.record_dir.clone(),
            tasks,
        };
        let (ws, joined) = signaling::open_and_join(&ws_url, token, None).await?;
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (peer_tx, peer_rx) = mpsc::unbounded_channel();
        let local = joined.participant.clone();
        let room_name = joined
            .room
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default();
        let ice = crate::ice::resolve_ice_servers(
            options
                .ice_servers_override
                .as_deref()
                .unwrap_or(&joined.ice_servers),
        )
        .await;
        tracing::debug!(?ice, "ICE servers");
        let mut actor = Actor {
            url: ws_url,
            token: token.to_string(),
            resume_token: None,
            local: local.clone(),
            participants: HashMap::new(),
            peers: HashMap::new(),
            peer_cfg: PeerConfig {
                host_ips: options.host_ips.clone().unwrap_or_else(default_host_ips),
                max_file_bytes: options.max_file_bytes,
                ice: Arc::new(ice),
                relay_only: options.relay_only,
                tls,
                turn_refresh: options.turn_refresh,
                media,
            },
            ice_override: options.ice_servers_override.is_some(),
            events: ev_tx,
            peer_tx,
            reconnect: options.reconnect,
            ws: Some(ws),
            attempt: 0,
            reconnect_at: Instant::now(),
            last_pong: Instant::now(),
        };
        actor.on_joined(*Box::new(joined), false);
        tokio::spawn(actor.run(cmd_rx, peer_rx));
        Ok(Room {
            cmd,
            events: Mutex::new(ev_rx),
            local,
            room_name,
        })
    }

    /// Ourselves, as the server described us in `joined`.
    ///
    /// ```no_run
    /// # fn f(room: &client::Room) { println!("{}", room.local_participant().display_name()); }
    /// ```
    pub fn local_participant(&self) -> &ParticipantInfo {
        &self.local
    }

    /// The room name from `joined`.
    ///
    /// ```no_run
    /// # fn f(room: &client::Room) { println!("in {}", room.name()); }
    /// ```
    pub fn name(&self) -> &str {
        &self.room_name
    }

    /// The next event; `None` once the room was left and every event was read.
    ///
    /// ```no_run
    /// # async fn f(room: &client::Room) {
    /// while let Some(ev) = room.next_event().await { println!("{ev:?}"); }
    /// # }
    /// ```
    pub async fn next_event(&self) -> Option<RoomEvent> {
        self.events.lock().await.recv().await
    }

    /// The other participants currently in the room.
    ///
    /// ```no_run
    /// # async fn f(room: &client::Room) -> Result<(), client::Error> {
    /// for p in room.participants().await? { println!("{}", p.display_name()); }
    /// # Ok(()) }
    /// ```
    pub async fn participants(&self) -> Result<Vec<ParticipantInfo>, Error> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(RoomCmd::Participants(tx))
            .map_err(|_| Error::RoomClosed)?;
        rx.await.map_err(|_| Error::RoomClosed)
    }

    /// Sends a chat message to everyone, as the demo app does (`{"type":"chat","text":...,"ts":...}` on the
    /// `data` channel). Returns to how many peers it was sent (peers whose channel is not open yet get it
    /// when it opens).
    ///
    /// ```no_run
    /// # async fn f(room: &client::Room) -> Result<(), client::Error> {
    /// room.send_chat("hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_chat(&self, text: &str) -> Result<usize, Error> {
        let msg = serde_json::json!({"type": "chat", "text": text, "ts": now_ms()});
        self.send(ChannelKind::Data, false, msg.to_string().into_bytes())
            .await
    }

    /// Sends a raw message to everyone on `data` or `lossy` (`binary: false` sends UTF-8 text).
    ///
    /// ```no_run
    /// # async fn f(room: &client::Room) -> Result<(), client::Error> {
    /// room.send(client::ChannelKind::Lossy, false, br#"{"cursor":[1,2]}"#.to_vec()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(
        &self,
        kind: ChannelKind,
        binary: bool,
        data: Vec<u8>,
    ) -> Result<usize, Error> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(RoomCmd::Send {
                kind,
                binary,
                data,
                reply,
            })
            .map_err(|_| Error::RoomClosed)?;
        rx.await.map_err(|_| Error::RoomClosed)
    }

    /// Sends a file to every connected participant and waits until each confirmed it (size and SHA-256).
    ///
    /// ```no_run
    /// # async fn f(room: &client::Room) -> Result<(), client::Error> {
    /// for d in room.send_file("photo.jpg").await? {
    ///     println!("{}: {}", d.participant.display_name(), d.ok);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_file(&self, path: impl AsRef<Path>) -> Result<Vec<FileDelivery>, Error> {
        self.send_file_with_progress(path, |_, _| {}).await
    }

    /// [`Room::send_file`] reporting `(bytes handed to the peer connections, total bytes for all peers)`.
    ///
    /// ```no_run
    /// # async fn f(room: &client::Room) -> Result<(), client::Error> {
    /// room.send_file_with_progress("big.bin", |sent, total| eprintln!("{sent}/{total}")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_file_with_progress<F>(
        &self,
        path: impl AsRef<Path>,
        progress: F,
    ) -> Result<Vec<FileDelivery>, Error>
    where
        F: Fn(u64, u64) + Send + Sync + 'static,
    {
        let path = path.as_ref().to_path_buf();
        let size = tokio::fs::metadata(&path).await?.len();
        let p2 = path.clone();
        let sha256 = tokio::task::spawn_blocking(move || crate::file::sha256_file(&p2))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(RoomCmd::Peers(tx))
            .map_err(|_| Error::RoomClosed)?;
        let peers = rx.await.map_err(|_| Error::RoomClosed)?;
        if peers.is_empty() {
            return Err(Error::NoPeers);
        }
        let id = random_id();
        let start = serde_json::to_string(&FileControl::Start {
            id: id.clone(),
            name,
            size,
            mime: "application/octet-stream".into(),
            sha256,
        })
        .map_err(|e| Error::Protocol(e.to_string()))?;
        let end = serde_json::to_string(&FileControl::End { id: id.clone() })
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let total = size * peers.len() as u64;
        let sent = Arc::new(AtomicU64::new(0));
        let progress: Progress = Arc::new(progress);
        let mut waits = Vec::new();
        for (info, cmd) in peers {
            let (ftx, frx) = mpsc::channel(16);
            let (ack_tx, ack_rx) = oneshot::channel();
            let job = FileJob {
                id: id.clone(),
                frames: frx,
            };
            if cmd.send(PeerCmd::SendFile { job, ack: ack_tx }).is_err() {
                continue;
            }
            let (path, start, end, sent, progress) = (
                path.clone(),
                start.clone(),
                end.clone(),
                sent.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = read_frames(&path, start, end, ftx, sent, total, progress).await {
                    tracing::warn!(error = %e, "reading the file to send failed");
                }
            });
            waits.push((info, ack_rx));
        }
        let mut out = Vec::new();
        for (participant, ack) in waits {
            out.push(match ack.await {
                Ok(a) => FileDelivery {
                    participant,
                    ok: a.ok,
                    sha256: a.sha256,
                    error: a.error,
                },
                Err(_) => FileDelivery {
                    participant,
                    ok: false,
                    sha256: String::new(),
                    error: Some("the peer connection closed before the receiver confirmed".into()),
                },
            });
        }
        Ok(out)
    }

    /// Closes the signaling socket without leaving, as a network cut would: the client reconnects and
    /// resumes its session (same participant id) while the peer connections keep running. For tests.
    ///
    /// ```no_run
    /// # fn f(room: &client::Room) { room.drop_signaling(); }
    /// ```
    pub fn drop_signaling(&self) {
        let _ = self.cmd.send(RoomCmd::DropSignaling);
    }

    /// Leaves the room: sends `leave`, closes every peer connection.
    ///
    /// ```no_run
    /// # async fn f(room: client::Room) { room.leave().await; }
    /// ```
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(RoomCmd::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        }
    }
}

async fn read_frames(
    path: &Path,
    start: String,
    end: String,
    tx: mpsc::Sender<FileFrame>,
    sent: Arc<AtomicU64>,
    total: u64,
    progress: Progress,
) -> Result<(), Error> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path).await?;
    if tx.send(FileFrame::Text(start)).await.is_err() {
        return Ok(());
    }
    loop {
        let mut buf = vec![0u8; FILE_CHUNK];
        let mut n = 0;
        while n < FILE_CHUNK {
            let r = f.read(&mut buf[n..]).await?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        buf.truncate(n);
        if tx.send(FileFrame::Binary(buf)).await.is_err() {
            return Ok(());
        }
        let s = sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        progress(s, total);
        if n < FILE_CHUNK {
            break;
        }
    }
    let _ = tx.send(FileFrame::Text(end)).await;
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_id() -> String {
    let b: [u8; 8] = rand::random();
    crate::file::hex(&b)
}

struct Actor {
    url: String,
    token: String,
    resume_token: Option<String>,
    local: ParticipantInfo,
    participants: HashMap<String, ParticipantInfo>,
    peers: HashMap<String, PeerHandle>,
    peer_cfg: PeerConfig,
    ice_override: bool,
    events: mpsc::UnboundedSender<RoomEvent>,
    peer_tx: mpsc::UnboundedSender<PeerOut>,
    reconnect: bool,
    ws: Option<Ws>,
    attempt: u32,
    reconnect_at: Instant,
    last_pong: Instant,
}

enum Wake {
    Ws(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Cmd(Option<RoomCmd>),
    Peer(Option<PeerOut>),
    Ping,
    Reconnect,
}

async fn next_ws(
    ws: &mut Option<Ws>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

impl Actor {
    fn emit(&self, ev: RoomEvent) {
        let _ = self.events.send(ev);
    }

    fn participant(&self, id: &str) -> ParticipantInfo {
        self.participants
            .get(id)
            .cloned()
            .unwrap_or_else(|| ParticipantInfo {
                id: id.to_string(),
                identity: id.to_string(),
                name: None,
                metadata: serde_json::Value::Null,
            })
    }

    async fn run(
        mut self,
        mut cmd_rx: mpsc::UnboundedReceiver<RoomCmd>,
        mut peer_rx: mpsc::UnboundedReceiver<PeerOut>,
    ) {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
        loop {
            let can_reconnect = self.ws.is_none() && self.reconnect;
            let wake = tokio::select! {
                m = next_ws(&mut self.ws) => Wake::Ws(m),
                c = cmd_rx.recv() => Wake::Cmd(c),
                o = peer_rx.recv() => Wake::Peer(o),
                _ = ping.tick() => Wake::Ping,
                _ = tokio::time::sleep_until(self.reconnect_at.into()), if can_reconnect => Wake::Reconnect,
            };
            match wake {
                Wake::Ws(Some(Ok(Message::Text(t)))) => {
                    if let Some(m) = signaling::parse_server_msg(t.as_str()) {
                        self.on_server(m).await;
                    }
                }
                Wake::Ws(Some(Ok(Message::Close(_)))) | Wake::Ws(None) | Wake::Ws(Some(Err(_))) => {
                    self.socket_lost();
                }
                Wake::Ws(Some(Ok(_))) => {}
                Wake::Cmd(None) => {
                    self.leave().await;
                    return;
                }
                Wake::Cmd(Some(RoomCmd::Leave(reply))) => {
                    self.leave().await;
                    let _ = reply.send(());
                    return;
                }
                Wake::Cmd(Some(c)) => self.on_cmd(c),
                Wake::Peer(Some(PeerOut::Signal(msg))) => self.send(msg).await,
                Wake::Peer(Some(PeerOut::Event { from, event })) => self.on_peer_event(from, event),
                Wake::Peer(None) => {}
                Wake::Ping => {
                    if self.ws.is_some() {
                        if self.last_pong.elapsed() > PING_INTERVAL * 2 + Duration::from_secs(5) {
                            tracing::info!("no pong from the signaling server: reconnecting");
                            self.socket_lost();
                        } else {
                            self.send(ClientMsg::Ping { ts: now_ms() }).await;
                        }
                    }
                }
                Wake::Reconnect => self.try_reconnect().await,
            }
        }
    }

    async fn send(&mut self, msg: ClientMsg) {
        let Some(ws) = self.ws.as_mut() else {
            tracing::debug!("signaling down: message dropped (re-sent after resume)");
            return;
        };
        if let Err(e) = signaling::send(ws, &msg).await {
            tracing::info!(error = %e, "signaling socket lost");
            self.socket_lost();
        }
    }

    fn socket_lost(&mut self) {
        if self.ws.take().is_some() {
            self.emit(RoomEvent::Signaling(if self.reconnect {
                SignalingState::Reconnecting
            } else {
                SignalingState::Disconnected
            }));
        }
        let delay = (250u64 << self.attempt.min(5)).min(5000);
        self.attempt += 1;
        self.reconnect_at = Instant::now() + Duration::from_millis(delay);
    }

    async fn try_reconnect(&mut self) {
        match signaling::open_and_join(&self.url, &self.token, self.resume_token.clone()).await {
            Ok((ws, joined)) => {
                if !self.ice_override {
                    // Fresh TURN credentials: for new peer connections and the running allocations.
                    self.renew_ice(&joined.ice_servers).await;
                }
                self.ws = Some(ws);
                self.attempt = 0;
                self.last_pong = Instant::now();
                self.on_joined(joined, true);
            }
            Err(Error::Refused { code, message }) => {
                if code == "unauthorized" && self.resume_token.is_some() {
                    tracing::info!("session could not be resumed: joining afresh");
                    self.resume_token = None;
                    self.reconnect_at = Instant::now();
                } else if FATAL_CODES.contains(&code.as_str()) {
                    self.emit(RoomEvent::Error { code, message });
                    self.emit(RoomEvent::Signaling(SignalingState::Disconnected));
                    self.reconnect = false;
                } else {
                    self.socket_lost();
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "reconnect failed");
                self.socket_lost();
            }
        }
    }

    /// New ICE servers (renewed TURN credentials) for new peers and every running peer's allocations.
    async fn renew_ice(&mut self, servers: &[crate::IceServer]) {
        let ice = Arc::new(crate::ice::resolve_ice_servers(servers).await);
        self.peer_cfg.ice = ice.clone();
        for peer in self.peers.values() {
            let _ = peer.cmd.send(PeerCmd::IceServers(ice.clone()));
        }
    }

    fn on_joined(&mut self, joined: Joined, reconnect: bool) {
        let same = reconnect && joined.resumed && joined.participant.id == self.local.id;
        self.resume_token = joined.resume_token.clone();
        self.emit(RoomEvent::Signaling(SignalingState::Connected));
        if same {
            let roster: HashMap<String, ParticipantInfo> = joined
                .participants
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect();
            let gone: Vec<String> = self
                .participants
                .keys()
                .filter(|id| !roster.contains_key(*id))
                .cloned()
                .collect();
            for id in gone {
                self.remove_participant(&id, "left");
            }
            for (id, info) in roster {
                if self.participants.insert(id, info.clone()).is_none() {
                    // Joined during our gap: its offer was lost; its watchdog offers again.
                    self.emit(RoomEvent::ParticipantJoined(info));
                }
            }
            for peer in self.peers.values() {
                let _ = peer.cmd.send(PeerCmd::Resumed);
            }
            return;
        }
        // A fresh session: start the mesh from scratch.
        let ids: Vec<String> = self.participants.keys().cloned().collect();
        for id in ids {
            self.remove_participant(&id, "reconnected");
        }
        self.local = joined.participant.clone();
        for info in joined.participants {
            self.participants.insert(info.id.clone(), info.clone());
            self.emit(RoomEvent::ParticipantJoined(info.clone()));
            // Mesh rule: the participant who joins later offers to everyone already present.
            self.ensure_peer(&info.id, true);
        }
    }

    fn ensure_peer(&mut self, id: &str, offer_first: bool) -> &PeerHandle {
        if !self.peers.contains_key(id) {
            let h = PeerHandle::spawn(
                self.local.id.clone(),
                id.to_string(),
                offer_first,
                self.peer_cfg.clone(),
                self.peer_tx.clone(),
            );
            self.peers.insert(id.to_string(), h);
        }
        &self.peers[id]
    }

    fn remove_participant(&mut self, id: &str, reason: &str) {
        if let Some(h) = self.peers.remove(id) {
            h.close();
        }
        if let Some(p) = self.participants.remove(id) {
            self.emit(RoomEvent::ParticipantLeft {
                participant: p,
                reason: reason.to_string(),
            });
        }
    }

    async fn on_server(&mut self, m: ServerMsg) {
        match m {
            ServerMsg::Joined(_) => {}
            ServerMsg::ParticipantJoined { participant } => {
                if participant.id == self.local.id {
                    return;
                }
                let known = self
                    .participants
                    .insert(participant.id.clone(), participant.clone());
                if known.is_some() {
                    self.emit(RoomEvent::ParticipantUpdated(participant));
                } else {
                    // The newcomer offers to us; our peer task starts when its offer arrives.
                    self.emit(RoomEvent::ParticipantJoined(participant));
                }
            }
            ServerMsg::ParticipantLeft { id, reason } => {
                self.remove_participant(&id, reason.as_deref().unwrap_or("left"));
            }
            ServerMsg::ParticipantUpdated { participant } => {
                if participant.id == self.local.id {
                    self.local = participant;
                } else if self.participants.contains_key(&participant.id) {
                    self.participants
                        .insert(participant.id.clone(), participant.clone());
                    self.emit(RoomEvent::ParticipantUpdated(participant));
                }
            }
            ServerMsg::Offer { from, sdp } | ServerMsg::Answer { from, sdp }
                if from == self.local.id =>
            {
                let _ = sdp;
            }
            ServerMsg::Offer { from, sdp } => {
                if !self.participants.contains_key(&from) {
                    let info = self.participant(&from);
                    self.participants.insert(from.clone(), info.clone());
                    self.emit(RoomEvent::ParticipantJoined(info));
                }
                let peer = self.ensure_peer(&from, false);
                let _ = peer.cmd.send(PeerCmd::Description { offer: true, sdp });
            }
            ServerMsg::Answer { from, sdp } => {
                if let Some(peer) = self.peers.get(&from) {
                    let _ = peer.cmd.send(PeerCmd::Description { offer: false, sdp });
                }
            }
            ServerMsg::Candidate { from, candidate } => {
                if let Some(peer) = self.peers.get(&from) {
                    let _ = peer.cmd.send(PeerCmd::Candidate(candidate));
                }
            }
            ServerMsg::Pong {} => self.last_pong = Instant::now(),
            ServerMsg::IceServers { ice_servers } => {
                if self.ice_override {
                    tracing::debug!("renewed ICE servers ignored: an override is in use");
                } else {
                    tracing::debug!("renewed ICE servers from the server");
                    self.renew_ice(&ice_servers).await;
                }
            }
            ServerMsg::Error { code, message } => {
                tracing::warn!(%code, %message, "signaling error");
                if FATAL_CODES.contains(&code.as_str()) {
                    self.reconnect = false;
                }
                self.emit(RoomEvent::Error { code, message });
            }
            ServerMsg::Unknown => {}
        }
    }

    fn on_cmd(&mut self, c: RoomCmd) {
        match c {
            RoomCmd::Send {
                kind,
                binary,
                data,
                reply,
            } => {
                let mut n = 0;
                for peer in self.peers.values() {
                    if peer
                        .cmd
                        .send(PeerCmd::Send {
                            kind,
                            binary,
                            data: data.clone(),
                        })
                        .is_ok()
                    {
                        n += 1;
                    }
                }
                let _ = reply.send(n);
            }
            RoomCmd::Peers(reply) => {
                let list = self
                    .peers
                    .iter()
                    .map(|(id, h)| (self.participant(id), h.cmd.clone()))
                    .collect();
                let _ = reply.send(list);
            }
            RoomCmd::Participants(reply) => {
                let _ = reply.send(self.participants.values().cloned().collect());
            }
            RoomCmd::DropSignaling => {
                self.attempt = 0;
                self.socket_lost();
            }
            RoomCmd::Leave(_) => {}
        }
    }

    fn on_peer_event(&mut self, from: String, event: PeerEvent) {
        if !self.peers.contains_key(&from) {
            return; // a closed peer's last words
        }
        let p = self.participant(&from);
        let ev = match event {
            PeerEvent::State(state) => RoomEvent::PeerState {
                participant: p,
                state,
            },
            PeerEvent::ChannelOpen(channel) => RoomEvent::ChannelOpen {
                participant: p,
                channel,
            },
            PeerEvent::Data { kind, binary, data } => {
                if kind == ChannelKind::Data && !binary {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) {
                        if v.get("type").and_then(|t| t.as_str()) == Some("chat") {
                            if let Some(text) = v.get("text").and_then(|t| t.as_str()) {
                                self.emit(RoomEvent::Chat {
                                    from: p,
                                    text: text.to_string(),
                                });
                                return;
                            }
                        }
                    }
                }
                RoomEvent::Data {
                    from: p,
                    channel: kind,
                    binary,
                    data,
                }
            }
            PeerEvent::FileProgress {
                id,
                name,
                bytes,
                size,
            } => RoomEvent::FileProgress {
                from: p,
                id,
                name,
                bytes,
                size,
            },
            PeerEvent::File(file) => RoomEvent::FileReceived { from: p, file },
            PeerEvent::LocalCandidate {
                candidate,
                relay_protocol,
            } => RoomEvent::LocalCandidate {
                participant: p,
                candidate,
                relay_protocol: relay_protocol.map(str::to_string),
            },
            PeerEvent::Path(path) => RoomEvent::Path {
                participant: p,
                path,
            },
            PeerEvent::Warning { code, message } => RoomEvent::Error {
                code: code.to_string(),
                message: format!("{}: {message}", p.display_name()),
            },
            PeerEvent::Closed => {
                // The peer task ended on its own (str0m closed): forget it so a new offer starts afresh.
                self.peers.remove(&from);
                RoomEvent::PeerState {
                    participant: p,
                    state: PeerState::Closed,
                }
            }
        };
        self.emit(ev);
    }

    async fn leave(&mut self) {
        self.reconnect = false;
        self.send(ClientMsg::Leave).await;
        if let Some(mut ws) = self.ws.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
        for (_, h) in self.peers.drain() {
            h.close();
        }
        self.emit(RoomEvent::Signaling(SignalingState::Disconnected));
    }
}
