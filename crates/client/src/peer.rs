//! One mesh link: a str0m `Rtc` to one remote participant, driven by tokio UDP sockets.
//!
//! Roles follow `docs/protocol.md`: the later joiner offers first, the peer whose id sorts lower is impolite
//! (perfect negotiation). The three data channels are negotiated out of band with the browser SDK's ids.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, CandidateKind, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::broadcast;
use tokio::sync::{mpsc, oneshot};

use crate::file::{FileControl, Incoming, ReceivedFile};
use crate::ice::{IceConfig, TurnTransport};
use crate::media::{IvfWriter, MediaConfig, OggOpusWriter, OutFrame};
use crate::relay::{binding_request, binding_response, TurnAlloc, TurnEvent};
use crate::signaling::{CandidateInit, ClientMsg};

/// Send-side back-pressure thresholds of the file channel (as the SDK).
const FILE_HIGH_WATER: usize = 1024 * 1024;
const FILE_LOW_WATER: usize = 256 * 1024;
const OFFER_WATCHDOG: Duration = Duration::from_secs(8);
const DISCONNECTED_RESTART: Duration = Duration::from_secs(3);
const MAX_OUTBOX: usize = 1000;
/// How long a TURN allocation being replaced (its server refused renewed credentials) stays after its
/// replacement is ready: time for the remote to check the new relayed candidate before the old one goes.
const RETIRE_GRACE: Duration = Duration::from_secs(3);

/// The SDK's data channels: label, negotiated id, ordered, reliability.
const CHANNELS: [(&str, u16, bool, Reliability); 3] = [
    ("data", 0, true, Reliability::Reliable),
    (
        "lossy",
        1,
        false,
        Reliability::MaxRetransmits { retransmits: 0 },
    ),
    ("file", 2, true, Reliability::Reliable),
];

/// Which of the three data channels.
///
/// ```
/// assert_eq!(client::ChannelKind::Data.label(), "data");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// `data` (id 0): ordered, reliable — chat and app messages.
    Data,
    /// `lossy` (id 1): unordered, no retransmits.
    Lossy,
    /// `file` (id 2): ordered, reliable — file transfers.
    File,
}

impl ChannelKind {
    fn index(self) -> usize {
        match self {
            ChannelKind::Data => 0,
            ChannelKind::Lossy => 1,
            ChannelKind::File => 2,
        }
    }

    fn from_index(i: usize) -> ChannelKind {
        match i {
            0 => ChannelKind::Data,
            1 => ChannelKind::Lossy,
            _ => ChannelKind::File,
        }
    }

    /// The channel label shared with the browser SDK.
    ///
    /// ```
    /// assert_eq!(client::ChannelKind::File.label(), "file");
    /// ```
    pub fn label(self) -> &'static str {
        CHANNELS[self.index()].0
    }
}

/// State of the connection to one peer.
///
/// ```
/// assert_ne!(client::PeerState::Connected, client::PeerState::Connecting);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// ICE checks running.
    Connecting,
    /// ICE and DTLS are up.
    Connected,
    /// Consent lost; an ICE restart follows if it does not come back.
    Disconnected,
    /// The peer connection is closed.
    Closed,
}

/// The result of delivering a file to one peer.
///
/// ```
/// # fn show(d: &client::FileDelivery) {
/// println!("{}: {}", d.participant.display_name(), if d.ok { "OK" } else { "failed" });
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FileDelivery {
    /// Who it was sent to.
    pub participant: crate::ParticipantInfo,
    /// Whether the receiver confirmed size and SHA-256.
    pub ok: bool,
    /// SHA-256 the receiver computed (empty when it did not answer).
    pub sha256: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The path media and data take to a participant: the ICE candidate pair in use.
///
/// ```
/// use client::PeerPath;
/// let p = PeerPath {
///     local: "10.0.0.2:50000".parse().unwrap(),
///     remote: "203.0.113.20:50000".parse().unwrap(),
///     protocol: "udp".into(),
///     relay_protocol: None,
///     remote_relayed: false,
/// };
/// assert!(!p.is_relayed());
/// assert_eq!(p.to_string(), "direct udp 10.0.0.2:50000 -> 203.0.113.20:50000");
///
/// // To the remote's relayed candidate: through its TURN server.
/// let theirs = PeerPath { remote_relayed: true, ..p.clone() };
/// assert!(theirs.is_relayed());
/// assert_eq!(theirs.to_string(), "relayed (their TURN) udp 10.0.0.2:50000 -> 203.0.113.20:50000");
///
/// // From our own relayed candidate (a TURN allocation reached over TLS).
/// let ours = PeerPath { relay_protocol: Some("tls".into()), ..p };
/// assert!(ours.to_string().starts_with("relayed (our TURN over tls) udp"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPath {
    /// Our side of the pair (for a relayed pair: the TURN relayed address).
    pub local: SocketAddr,
    /// The remote side of the pair.
    pub remote: SocketAddr,
    /// Transport of the pair (`udp`, `tcp`).
    pub protocol: String,
    /// Set when our side is a TURN relay: how the TURN server is reached (`udp`, `tcp`, `tls`).
    pub relay_protocol: Option<String>,
    /// The remote side is the remote's TURN relay (a relayed candidate it signaled).
    pub remote_relayed: bool,
}

impl PeerPath {
    /// Whether the data goes through a TURN relay (ours or the remote's), else directly between the peers.
    pub fn is_relayed(&self) -> bool {
        self.relay_protocol.is_some() || self.remote_relayed
    }
}

impl std::fmt::Display for PeerPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p, l, r) = (&self.protocol, self.local, self.remote);
        match (&self.relay_protocol, self.remote_relayed) {
            (Some(via), false) => write!(f, "relayed (our TURN over {via}) {p} {l} -> {r}"),
            (Some(via), true) => write!(f, "relayed (both TURN, ours over {via}) {p} {l} -> {r}"),
            (None, true) => write!(f, "relayed (their TURN) {p} {l} -> {r}"),
            (None, false) => write!(f, "direct {p} {l} -> {r}"),
        }
    }
}

/// Acknowledgement of one transfer (internal).
#[derive(Debug)]
pub(crate) struct FileAck {
    pub ok: bool,
    pub sha256: String,
    pub error: Option<String>,
}

/// A frame of an outgoing transfer.
pub(crate) enum FileFrame {
    Text(String),
    Binary(Vec<u8>),
}

/// An outgoing transfer: frames come from a reader task; the ack resolves when the receiver answers.
pub(crate) struct FileJob {
    pub id: String,
    pub frames: mpsc::Receiver<FileFrame>,
}

/// Commands to a peer task.
pub(crate) enum PeerCmd {
    Description {
        offer: bool,
        sdp: String,
    },
    Candidate(Option<CandidateInit>),
    Send {
        kind: ChannelKind,
        binary: bool,
        data: Vec<u8>,
    },
    SendFile {
        job: FileJob,
        ack: oneshot::Sender<FileAck>,
    },
    /// The signaling socket came back (resumed session): re-offer what may have been lost.
    Resumed,
    /// Fresh ICE servers (renewed TURN credentials) from the server.
    IceServers(Arc<IceConfig>),
}

/// What a peer task reports to the room.
pub(crate) enum PeerEvent {
    State(PeerState),
    ChannelOpen(ChannelKind),
    Data {
        kind: ChannelKind,
        binary: bool,
        data: Vec<u8>,
    },
    FileProgress {
        id: String,
        name: String,
        bytes: u64,
        size: u64,
    },
    File(ReceivedFile),
    /// A local candidate was gathered (SDP `candidate:` string, relay transport if relayed).
    LocalCandidate {
        candidate: String,
        relay_protocol: Option<&'static str>,
    },
    /// The candidate pair in use changed.
    Path(PeerPath),
    /// Something worth showing (a relay that could not be allocated, ...).
    Warning {
        code: &'static str,
        message: String,
    },
    Closed,
}

/// Messages from peer tasks to the room task.
pub(crate) enum PeerOut {
    Signal(ClientMsg),
    Event { from: String, event: PeerEvent },
}

/// Settings of a peer connection.
#[derive(Debug, Clone)]
pub(crate) struct PeerConfig {
    pub host_ips: Vec<IpAddr>,
    pub max_file_bytes: u64,
    /// STUN and TURN servers.
    pub ice: Arc<IceConfig>,
    /// Only relayed candidates (the browser's `iceTransportPolicy: "relay"`).
    pub relay_only: bool,
    /// TLS client settings for `turns:` servers.
    pub tls: Arc<rustls::ClientConfig>,
    /// Refresh TURN allocations and channels at least this often.
    pub turn_refresh: Option<Duration>,
    /// Published and recorded media.
    pub media: MediaConfig,
}

/// The local addresses to offer as host candidates: 127.0.0.1 and every non-loopback interface address
/// (IPv4, and IPv6 that is not link-local).
pub(crate) fn default_host_ips() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    match if_addrs::get_if_addrs() {
        Ok(ifs) => {
            for i in ifs {
                let ip = i.ip();
                if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
                    continue;
                }
                if let IpAddr::V6(v6) = ip {
                    if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                        continue;
                    }
                }
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list network interfaces; offering 127.0.0.1 only")
        }
    }
    ips
}

/// A running peer task.
pub(crate) struct PeerHandle {
    pub cmd: mpsc::UnboundedSender<PeerCmd>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerHandle {
    pub fn spawn(
        local_id: String,
        remote_id: String,
        offer_first: bool,
        config: PeerConfig,
        out: mpsc::UnboundedSender<PeerOut>,
    ) -> PeerHandle {
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let remote = remote_id.clone();
            let out2 = out.clone();
            if let Err(e) = run_peer(local_id, remote_id, offer_first, config, out, cmd_rx).await {
                tracing::warn!(peer = %remote, error = %e, "peer connection ended with an error");
            }
            let _ = out2.send(PeerOut::Event {
                from: remote,
                event: PeerEvent::Closed,
            });
        });
        PeerHandle { cmd, task }
    }

    pub fn close(self) {
        self.task.abort();
    }
}

struct Packet {
    data: Vec<u8>,
    source: SocketAddr,
    destination: SocketAddr,
}

/// Input from the network tasks.
enum NetIn {
    /// A datagram on a host socket.
    Host(Packet),
    /// Bytes from TURN server `idx` (one datagram, or one frame of a TCP/TLS stream).
    Turn { idx: usize, data: Vec<u8> },
    /// The TCP (or TLS) connection to TURN server `idx` is up.
    TurnUp { idx: usize, local: SocketAddr },
    /// The transport to TURN server `idx` failed.
    TurnDown { idx: usize, reason: String },
}

enum TurnIo {
    Pending,
    Udp(Arc<UdpSocket>),
    Tcp(mpsc::Sender<Vec<u8>>),
}

impl TurnIo {
    /// Sends one message to the TURN server; a full socket or writer queue drops it, as a congested network
    /// would.
    fn send(&self, b: Vec<u8>) {
        match self {
            TurnIo::Udp(s) => {
                let _ = s.try_send(&b);
            }
            TurnIo::Tcp(tx) => {
                let _ = tx.try_send(b);
            }
            TurnIo::Pending => {}
        }
    }
}

/// One TURN allocation of this peer connection and its transport.
struct TurnSlot {
    alloc: TurnAlloc,
    io: TurnIo,
    local: Option<SocketAddr>,
    /// Index in `IceConfig::turn`.
    server: usize,
    transport: TurnTransport,
    announced: bool,
    /// The relayed candidate given to str0m.
    candidate: Option<Candidate>,
    /// This allocation replaces slot `n` (whose server refused renewed credentials).
    replaces: Option<usize>,
    /// A replacement was started for this allocation.
    replaced: bool,
    /// When to release this (replaced) allocation and withdraw its candidate.
    retire_at: Option<Instant>,
}

/// A STUN Binding in flight for a server-reflexive candidate.
struct BindingTxn {
    base: SocketAddr,
    server: SocketAddr,
    bytes: Vec<u8>,
    sent: u32,
    next: Instant,
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

struct Peer {
    remote_id: String,
    polite: bool,
    rtc: Rtc,
    sockets: Vec<Arc<UdpSocket>>,
    out: mpsc::UnboundedSender<PeerOut>,
    config: PeerConfig,
    pending: Option<(SdpPendingOffer, Instant)>,
    negotiated: bool,
    channels: Option<[ChannelId; 3]>,
    open: [bool; 3],
    outbox: VecDeque<(ChannelKind, bool, Vec<u8>)>,
    remote_set: bool,
    early_candidates: Vec<Candidate>,
    jobs: VecDeque<FileJob>,
    job_ended: bool,
    hold: Option<FileFrame>,
    acks: HashMap<String, oneshot::Sender<FileAck>>,
    incoming: Option<Incoming>,
    state: PeerState,
    disconnected_since: Option<Instant>,
    /// A relayed candidate was withdrawn: restart ICE so the remote forgets it (there is no trickle message
    /// removing a candidate) and both sides pair what is left.
    restart_wanted: bool,
    flush_needed: bool,
    net_tx: mpsc::Sender<NetIn>,
    turns: Vec<TurnSlot>,
    bindings: HashMap<[u8; 12], BindingTxn>,
    /// Server-reflexive and relayed candidates (re-added when the `Rtc` is replaced).
    extra_candidates: Vec<Candidate>,
    /// A local description was sent: later candidates are trickled.
    described: bool,
    /// `a=mid` of our first m-line (for trickled candidates).
    mid: Option<String>,
    tasks: AbortOnDrop,
    media_rx: Option<broadcast::Receiver<Arc<OutFrame>>>,
    /// Audio and video m-lines (ours and the remote's).
    mids: Vec<(Mid, MediaKind)>,
    /// Video m-lines that got a keyframe (frames before it are not sent).
    video_started: Vec<Mid>,
    /// The candidate pair last reported from str0m's stats: (local, remote, remote is a relayed candidate) —
    /// a candidate signaled after the pair was selected can reveal that the remote side is a relay.
    path: Option<(SocketAddr, SocketAddr, bool)>,
    /// Addresses of the remote's relayed candidates (a pair to one of them goes through the remote's TURN).
    remote_relays: HashSet<SocketAddr>,
    rec_video: Option<IvfWriter>,
    rec_audio: Option<OggOpusWriter>,
    keyframe_requested: Option<Instant>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Release the relays at once rather than letting them time out.
        let now = Instant::now();
        for slot in &mut self.turns {
            if let (Some(b), TurnIo::Udp(sock)) = (slot.alloc.deallocate(now), &slot.io) {
                let _ = sock.try_send(&b);
            }
        }
    }
}

/// How often str0m reports stats (the selected candidate pair among them).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

fn new_rtc() -> Rtc {
    Rtc::builder()
        .set_stats_interval(Some(STATS_INTERVAL))
        .build(Instant::now())
}

async fn run_peer(
    local_id: String,
    remote_id: String,
    offer_first: bool,
    config: PeerConfig,
    out: mpsc::UnboundedSender<PeerOut>,
    mut cmd_rx: mpsc::UnboundedReceiver<PeerCmd>,
) -> Result<(), crate::Error> {
    let (net_tx, mut net_rx) = mpsc::channel::<NetIn>(4096);
    let mut sockets = Vec::new();
    let mut readers = Vec::new();
    let host_ips = if config.relay_only {
        Vec::new()
    } else {
        config.host_ips.clone()
    };
    for ip in &host_ips {
        let sock = match UdpSocket::bind(SocketAddr::new(*ip, 0)).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::debug!(%ip, error = %e, "cannot bind a UDP socket, skipping this address");
                continue;
            }
        };
        let local = sock.local_addr()?;
        let (s, tx) = (sock.clone(), net_tx.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match s.recv_from(&mut buf).await {
                    Ok((n, source)) => {
                        let p = Packet {
                            data: buf[..n].to_vec(),
                            source,
                            destination: local,
                        };
                        if tx.send(NetIn::Host(p)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        // ICMP port unreachable and friends: keep reading.
                        tracing::trace!(error = %e, "udp recv error");
                    }
                }
            }
        }));
        sockets.push(sock);
    }
    if sockets.is_empty() && !config.relay_only {
        return Err(crate::Error::Io(std::io::Error::other(
            "no local address to bind a UDP socket to",
        )));
    }

    let mut peer = Peer {
        polite: local_id > remote_id,
        remote_id,
        rtc: new_rtc(),
        sockets,
        out,
        config,
        pending: None,
        negotiated: false,
        channels: None,
        open: [false; 3],
        outbox: VecDeque::new(),
        remote_set: false,
        early_candidates: Vec::new(),
        jobs: VecDeque::new(),
        job_ended: false,
        hold: None,
        acks: HashMap::new(),
        incoming: None,
        state: PeerState::Connecting,
        disconnected_since: None,
        restart_wanted: false,
        flush_needed: false,
        net_tx,
        turns: Vec::new(),
        bindings: HashMap::new(),
        extra_candidates: Vec::new(),
        described: false,
        mid: None,
        tasks: AbortOnDrop(readers),
        media_rx: None,
        mids: Vec::new(),
        video_started: Vec::new(),
        path: None,
        remote_relays: HashSet::new(),
        rec_video: None,
        rec_audio: None,
        keyframe_requested: None,
    };
    peer.media_rx = peer.config.media.publish.as_ref().map(|t| t.subscribe());
    peer.add_local_candidates();
    peer.start_gathering();
    tracing::debug!(peer = %peer.remote_id, polite = peer.polite, offer_first, "peer task started");
    if offer_first {
        peer.make_offer(false);
    }

    enum Wake {
        Timeout,
        Net(NetIn),
        Cmd(Option<PeerCmd>),
        Frame(Option<FileFrame>),
        Media(Option<Arc<OutFrame>>),
    }

    async fn next_media(
        rx: &mut Option<broadcast::Receiver<Arc<OutFrame>>>,
    ) -> Option<Arc<OutFrame>> {
        let Some(r) = rx.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            match r.recv().await {
                Ok(f) => return Some(f),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    async fn next_frame(jobs: &mut VecDeque<FileJob>) -> Option<FileFrame> {
        match jobs.front_mut() {
            Some(j) => j.frames.recv().await,
            None => std::future::pending().await,
        }
    }

    loop {
        let mut timeout = peer.drain();
        if !peer.rtc.is_alive() {
            peer.set_state(PeerState::Closed);
            return Ok(());
        }
        peer.after_drain();
        timeout = timeout.min(peer.drain());
        peer.check_timers();
        timeout = timeout.min(peer.drain());
        if let Some(t) = peer.gather_timers(Instant::now()) {
            timeout = timeout.min(t);
        }
        timeout = timeout.min(peer.drain());
        let now = Instant::now();
        if peer.hold.is_some() || !peer.outbox.is_empty() {
            timeout = timeout.min(now + Duration::from_millis(20));
        }
        if peer.pending.is_some() || peer.disconnected_since.is_some() {
            timeout = timeout.min(now + Duration::from_millis(500));
        }
        let can_pull = peer.can_pull_frame();
        let wake = tokio::select! {
            _ = tokio::time::sleep_until(timeout.max(now).into()) => Wake::Timeout,
            p = net_rx.recv() => match p { Some(p) => Wake::Net(p), None => return Ok(()) },
            c = cmd_rx.recv() => Wake::Cmd(c),
            f = next_frame(&mut peer.jobs), if can_pull => Wake::Frame(f),
            m = next_media(&mut peer.media_rx) => Wake::Media(m),
        };
        match wake {
            Wake::Timeout => {
                if let Err(e) = peer.rtc.handle_input(Input::Timeout(Instant::now())) {
                    tracing::warn!(error = %e, "rtc timeout handling failed");
                }
            }
            Wake::Net(n) => peer.on_net(n),
            Wake::Cmd(None) => {
                peer.rtc.disconnect();
                return Ok(());
            }
            Wake::Cmd(Some(cmd)) => peer.on_cmd(cmd),
            Wake::Frame(Some(frame)) => peer.write_frame(frame),
            Wake::Frame(None) => peer.finish_job(),
            Wake::Media(Some(f)) => peer.send_media(&f),
            Wake::Media(None) => peer.media_rx = None,
        }
    }
}

impl Peer {
    fn add_local_candidates(&mut self) {
        for s in &self.sockets {
            let Ok(addr) = s.local_addr() else { continue };
            match Candidate::host(addr, "udp") {
                Ok(c) => {
                    self.rtc.add_local_candidate(c);
                }
                Err(e) => tracing::debug!(%addr, error = %e, "bad host candidate"),
            }
        }
        for c in self.extra_candidates.clone() {
            self.rtc.add_local_candidate(c);
        }
    }

    /// Adds a gathered server-reflexive or relayed candidate; trickles it if our description went out.
    fn add_gathered_candidate(&mut self, c: Candidate, relay_protocol: Option<&'static str>) {
        self.extra_candidates.push(c.clone());
        let Some(added) = self.rtc.add_local_candidate(c) else {
            return;
        };
        let sdp = added.to_sdp_string();
        tracing::debug!(peer = %self.remote_id, candidate = %sdp, "local candidate gathered");
        if self.described {
            self.signal(ClientMsg::Candidate {
                to: self.remote_id.clone(),
                candidate: Some(CandidateInit {
                    candidate: sdp.clone(),
                    sdp_mid: self.mid.clone(),
                    sdp_mline_index: Some(0),
                    username_fragment: None,
                }),
            });
        }
        self.emit(PeerEvent::LocalCandidate {
            candidate: sdp,
            relay_protocol,
        });
        self.drain();
    }

    /// Notes that a local description was sent (and its first `a=mid`).
    fn described(&mut self, sdp: &str) {
        self.described = true;
        if let Some(mid) = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(|m| m.trim().to_string())
        {
            self.mid = Some(mid);
        }
    }

    /// Starts STUN Bindings (server-reflexive candidates) and TURN allocations (relayed candidates).
    fn start_gathering(&mut self) {
        let ice = self.config.ice.clone();
        let now = Instant::now();
        if !self.config.relay_only {
            for server in &ice.stun {
                for sock in &self.sockets {
                    let Ok(base) = sock.local_addr() else {
                        continue;
                    };
                    // Same family, and loopback sockets only reach loopback servers (and vice versa).
                    if base.is_ipv4() != server.is_ipv4()
                        || base.ip().is_loopback() != server.ip().is_loopback()
                    {
                        continue;
                    }
                    let mut bytes = Vec::new();
                    let Ok(tid) = binding_request(&mut bytes) else {
                        continue;
                    };
                    let _ = sock.try_send_to(&bytes, *server);
                    self.bindings.insert(
                        tid.0,
                        BindingTxn {
                            base,
                            server: *server,
                            bytes,
                            sent: 1,
                            next: now + Duration::from_millis(300),
                        },
                    );
                }
            }
        }
        for (i, t) in ice.turn.iter().enumerate() {
            // UDP first; TCP, then TLS, when the previous one fails (see `turn_events`).
            if let Some(first) = TurnTransport::ALL
                .into_iter()
                .find(|&x| t.addr(x).is_some())
            {
                self.start_turn(i, first);
            }
        }
        if self.config.relay_only && self.turns.is_empty() {
            self.emit(PeerEvent::Warning {
                code: "no_relay",
                message:
                    "relay-only mode but no TURN server is configured: the peer cannot connect"
                        .into(),
            });
        }
    }

    /// Opens the transport to TURN server `server` and starts an allocation.
    fn start_turn(&mut self, server: usize, transport: TurnTransport) {
        let Some(t) = self.config.ice.turn.get(server) else {
            return;
        };
        let Some(addr) = t.addr(transport) else {
            return;
        };
        let idx = self.turns.len();
        let mut slot = TurnSlot {
            alloc: TurnAlloc::new(addr, transport.is_stream(), &t.username, &t.password),
            io: TurnIo::Pending,
            local: None,
            server,
            transport,
            announced: false,
            candidate: None,
            replaces: None,
            replaced: false,
            retire_at: None,
        };
        if let Some(every) = self.config.turn_refresh {
            slot.alloc.set_refresh_interval(every);
        }
        let tx = self.net_tx.clone();
        if transport.is_stream() {
            let tls = match (&t.tls, transport) {
                (Some((_, host)), TurnTransport::Tls) => match crate::tls::server_name(host) {
                    Ok(name) => Some((self.config.tls.clone(), name)),
                    Err(e) => {
                        slot.alloc.transport_failed(&e.to_string());
                        self.turns.push(slot);
                        self.turn_events(idx);
                        return;
                    }
                },
                _ => None,
            };
            let (wtx, wrx) = mpsc::channel::<Vec<u8>>(1024);
            slot.io = TurnIo::Tcp(wtx);
            self.tasks
                .0
                .push(tokio::spawn(turn_stream_task(idx, addr, tls, tx, wrx)));
            self.turns.push(slot);
            return;
        }
        let bind_ip: IpAddr = match (addr.ip().is_loopback(), addr.is_ipv4()) {
            (true, _) => addr.ip(),
            (false, true) => IpAddr::from([0, 0, 0, 0]),
            (false, false) => IpAddr::from([0u16; 8]),
        };
        let sock = std::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0))
            .and_then(|s| s.connect(addr).map(|_| s))
            .and_then(|s| s.set_nonblocking(true).map(|_| s))
            .and_then(UdpSocket::from_std);
        let sock = match sock {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!(server = %addr, error = %e, "cannot open a UDP socket to the TURN server");
                slot.alloc.transport_failed(&e.to_string());
                self.turns.push(slot);
                self.turn_events(idx);
                return;
            }
        };
        slot.local = sock.local_addr().ok();
        let s = sock.clone();
        self.tasks.0.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match s.recv(&mut buf).await {
                    Ok(n) => {
                        let data = buf[..n].to_vec();
                        if tx.send(NetIn::Turn { idx, data }).await.is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        let reason = "no TURN server at this address (port unreachable)".into();
                        let _ = tx.send(NetIn::TurnDown { idx, reason }).await;
                        return;
                    }
                    Err(e) => tracing::trace!(error = %e, "turn socket recv error"),
                }
            }
        }));
        slot.io = TurnIo::Udp(sock);
        slot.alloc.start(Instant::now());
        self.turns.push(slot);
        self.flush_turn(idx);
    }

    /// Sends what allocation `idx` has for its server.
    fn flush_turn(&mut self, idx: usize) {
        let Some(slot) = self.turns.get_mut(idx) else {
            return;
        };
        while let Some(b) = slot.alloc.poll_transmit() {
            slot.io.send(b);
        }
    }

    /// Handles what allocation `idx` reports (relayed candidate, failure and TCP fallback).
    fn turn_events(&mut self, idx: usize) {
        loop {
            let Some(slot) = self.turns.get_mut(idx) else {
                return;
            };
            let Some(ev) = slot.alloc.poll_event() else {
                return;
            };
            match ev {
                TurnEvent::Allocated { relayed, .. } => {
                    let local = slot.local.unwrap_or(relayed);
                    let proto = slot.transport.name();
                    let first = !slot.announced;
                    slot.announced = true;
                    let replaces = slot.replaces;
                    tracing::info!(peer = %self.remote_id, server = %slot.alloc.server, %relayed, transport = proto, "TURN allocation ready");
                    if first {
                        match Candidate::relayed(relayed, local, "udp") {
                            Ok(c) => {
                                self.turns[idx].candidate = Some(c.clone());
                                self.add_gathered_candidate(c, Some(proto));
                            }
                            Err(e) => tracing::warn!(error = %e, "bad relayed candidate"),
                        }
                    }
                    if let Some(old) = replaces.and_then(|o| self.turns.get_mut(o)) {
                        // Make before break: the old relay goes once the remote had time to check the new
                        // one, and before its credentials expire.
                        let now = Instant::now();
                        let mut at = now + RETIRE_GRACE;
                        if let Some(left) = old.alloc.credentials_left() {
                            at = at.min(now + left.saturating_sub(Duration::from_millis(500)));
                        }
                        old.retire_at = Some(at);
                    }
                }
                TurnEvent::RenewalRefused(reason) => {
                    let (server, transport) = (slot.server, slot.transport);
                    if slot.replaced || slot.alloc.is_failed() {
                        continue;
                    }
                    slot.replaced = true;
                    tracing::info!(peer = %self.remote_id, %reason, "TURN server keeps allocations on their first credentials: replacing the allocation with one on the renewed credentials");
                    let new = self.turns.len();
                    self.start_turn(server, transport);
                    if let Some(n) = self.turns.get_mut(new) {
                        n.replaces = Some(idx);
                    }
                }
                TurnEvent::Failed(reason) => {
                    let (server, failed) = (slot.server, slot.transport);
                    let replaced = slot.replaced;
                    slot.retire_at = None;
                    if let Some(c) = slot.candidate.take() {
                        // Its pairs are dead: let ICE move to the remaining ones now.
                        self.extra_candidates.retain(|x| *x != c);
                        self.rtc.direct_api().invalidate_candidate(&c);
                        self.restart_wanted = true;
                        self.drain();
                    }
                    if replaced {
                        tracing::info!(peer = %self.remote_id, %reason, "replaced TURN allocation ended");
                        continue;
                    }
                    // Fallback order: UDP, TCP, TLS — the next one this server offers and we did not try.
                    let next = self.config.ice.turn.get(server).and_then(|t| {
                        TurnTransport::ALL.into_iter().find(|&x| {
                            x > failed
                                && t.addr(x).is_some()
                                && !self
                                    .turns
                                    .iter()
                                    .any(|s| s.server == server && s.transport == x)
                        })
                    });
                    if let Some(next) = next {
                        tracing::info!(peer = %self.remote_id, %reason, "TURN over {} failed, trying {}", failed.name(), next.name());
                        self.start_turn(server, next);
                        continue;
                    }
                    tracing::warn!(peer = %self.remote_id, %reason, "TURN allocation failed");
                    let alive = self.turns.iter().any(|s| !s.alloc.is_failed());
                    if self.config.relay_only && !alive {
                        self.emit(PeerEvent::Warning {
                            code: "relay_failed",
                            message: format!("no TURN relay could be allocated: {reason}"),
                        });
                    }
                }
            }
        }
    }

    /// Runs STUN and TURN timers; returns when they want to run next.
    fn gather_timers(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for i in 0..self.turns.len() {
            match self.turns[i].retire_at {
                Some(t) if t <= now => self.retire_turn(i, now),
                Some(t) => next = Some(next.map_or(t, |n| n.min(t))),
                None => {}
            }
            if self.turns[i].alloc.poll_timeout().is_some_and(|t| t <= now) {
                self.turns[i].alloc.handle_timeout(now);
                self.flush_turn(i);
                self.turn_events(i);
            }
            if let Some(t) = self.turns[i].alloc.poll_timeout() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        let mut gone = Vec::new();
        for (tid, b) in self.bindings.iter_mut() {
            if b.next <= now {
                if b.sent >= 4 {
                    gone.push(*tid);
                    continue;
                }
                if let Some(sock) = self
                    .sockets
                    .iter()
                    .find(|s| s.local_addr().ok() == Some(b.base))
                {
                    let _ = sock.try_send_to(&b.bytes, b.server);
                }
                b.sent += 1;
                b.next = now + Duration::from_millis(300u64 << b.sent);
            }
            next = Some(next.map_or(b.next, |n| n.min(b.next)));
        }
        for tid in gone {
            if let Some(b) = self.bindings.remove(&tid) {
                tracing::debug!(server = %b.server, "no answer from the STUN server");
            }
        }
        next
    }

    /// Releases a replaced allocation and withdraws its relayed candidate (str0m drops its pairs and moves to
    /// the best remaining one).
    fn retire_turn(&mut self, idx: usize, now: Instant) {
        let Some(slot) = self.turns.get_mut(idx) else {
            return;
        };
        slot.retire_at = None;
        if let Some(b) = slot.alloc.deallocate(now) {
            slot.io.send(b);
        }
        tracing::info!(peer = %self.remote_id, server = %slot.alloc.server, "replaced TURN allocation released");
        if let Some(c) = slot.candidate.take() {
            self.extra_candidates.retain(|x| *x != c);
            self.rtc.direct_api().invalidate_candidate(&c);
            self.restart_wanted = true;
        }
        self.drain();
    }

    /// New ICE servers (renewed TURN credentials): used by the allocations' next requests.
    fn on_ice_servers(&mut self, ice: Arc<IceConfig>) {
        let now = Instant::now();
        // First: a replacement allocation started below takes its credentials from here.
        self.config.ice = ice.clone();
        for i in 0..self.turns.len() {
            let slot = &mut self.turns[i];
            let Some(t) = ice.turn.get(slot.server) else {
                continue;
            };
            // The same server (same URL position and address): renew its credentials.
            if t.addr(slot.transport) != Some(slot.alloc.server) || slot.replaced {
                continue;
            }
            slot.alloc.set_credentials(&t.username, &t.password, now);
            self.flush_turn(i);
            self.turn_events(i);
        }
    }

    /// Sends a published frame on every m-line of its kind (video from a keyframe on).
    fn send_media(&mut self, f: &OutFrame) {
        if self.state != PeerState::Connected {
            return;
        }
        let codec = match f.kind {
            MediaKind::Audio => Codec::Opus,
            MediaKind::Video => Codec::Vp8,
        };
        let mids: Vec<Mid> = self
            .mids
            .iter()
            .filter(|(_, k)| *k == f.kind)
            .map(|(m, _)| *m)
            .collect();
        for mid in mids {
            if f.kind == MediaKind::Video && !self.video_started.contains(&mid) {
                if !f.keyframe {
                    continue;
                }
                self.video_started.push(mid);
            }
            let Some(w) = self.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = w
                .payload_params()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt())
            else {
                continue;
            };
            if let Err(e) = w.write(pt, Instant::now(), f.time, f.data.clone()) {
                tracing::trace!(%mid, error = %e, "media write failed");
            }
        }
        self.drain();
    }

    /// Writes received VP8 to `<dir>/<peer id>-video.ivf` and Opus to `<dir>/<peer id>-audio.ogg`.
    fn record(&mut self, d: MediaData) {
        let Some(dir) = self.config.media.record_dir.clone() else {
            return;
        };
        match d.params.spec().codec {
            Codec::Vp8 => {
                if self.rec_video.is_none() {
                    let path = dir.join(format!("{}-video.ivf", self.remote_id));
                    match IvfWriter::create(&path) {
                        Ok(w) => self.rec_video = Some(w),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot record video");
                            return;
                        }
                    }
                }
                let t = d.time.rebase(Frequency::NINETY_KHZ).numer();
                let written = match self.rec_video.as_mut().map(|w| w.write(t, &d.data)) {
                    Some(Ok(w)) => w,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "video recording failed");
                        self.rec_video = None;
                        return;
                    }
                    None => return,
                };
                let due = self
                    .keyframe_requested
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(1));
                if !written && due {
                    self.keyframe_requested = Some(Instant::now());
                    if let Some(mut w) = self.rtc.writer(d.mid) {
                        let _ = w.request_keyframe(d.rid, KeyframeRequestKind::Pli);
                    }
                }
            }
            Codec::Opus => {
                if self.rec_audio.is_none() {
                    let path = dir.join(format!("{}-audio.ogg", self.remote_id));
                    match OggOpusWriter::create(&path) {
                        Ok(w) => self.rec_audio = Some(w),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot record audio");
                            return;
                        }
                    }
                }
                let t = d.time.rebase(Frequency::FORTY_EIGHT_KHZ).numer();
                if let Some(Err(e)) = self.rec_audio.as_mut().map(|w| w.write(t, &d.data)) {
                    tracing::warn!(error = %e, "audio recording failed");
                    self.rec_audio = None;
                }
            }
            other => tracing::trace!(codec = ?other, "media of another codec not recorded"),
        }
    }

    fn on_net(&mut self, n: NetIn) {
        let now = Instant::now();
        match n {
            NetIn::Host(p) => {
                if !self.bindings.is_empty() {
                    if let Some((tid, mapped)) = binding_response(&p.data) {
                        if let Some(b) = self.bindings.get(&tid.0) {
                            if b.server == p.source && b.base == p.destination {
                                let base = b.base;
                                self.bindings.remove(&tid.0);
                                match mapped {
                                    Some(m) if m != base => {
                                        match Candidate::server_reflexive(m, base, "udp") {
                                            Ok(c) => self.add_gathered_candidate(c, None),
                                            Err(e) => tracing::debug!(error = %e, "bad srflx"),
                                        }
                                    }
                                    Some(_) => {
                                        tracing::debug!(%base, "server-reflexive address equals the host address")
                                    }
                                    None => tracing::debug!(%base, "STUN Binding failed"),
                                }
                                return;
                            }
                        }
                    }
                }
                let Ok(recv) = Receive::new(Protocol::Udp, p.source, p.destination, &p.data) else {
                    return;
                };
                if let Err(e) = self.rtc.handle_input(Input::Receive(now, recv)) {
                    tracing::debug!(error = %e, "rtc input rejected");
                }
            }
            NetIn::Turn { idx, data } => {
                let Some(slot) = self.turns.get_mut(idx) else {
                    return;
                };
                let relayed = slot.alloc.relayed();
                let got = slot.alloc.handle_input(&data, now);
                if let (Some((peer, payload)), Some(relayed)) = (got, relayed) {
                    if let Ok(recv) = Receive::new(Protocol::Udp, peer, relayed, &payload) {
                        if let Err(e) = self.rtc.handle_input(Input::Receive(now, recv)) {
                            tracing::debug!(error = %e, "rtc input rejected");
                        }
                    }
                }
                self.flush_turn(idx);
                self.turn_events(idx);
            }
            NetIn::TurnUp { idx, local } => {
                if let Some(slot) = self.turns.get_mut(idx) {
                    slot.local = Some(local);
                    slot.alloc.start(now);
                }
                self.flush_turn(idx);
            }
            NetIn::TurnDown { idx, reason } => {
                if let Some(slot) = self.turns.get_mut(idx) {
                    slot.alloc.transport_failed(&reason);
                }
                self.turn_events(idx);
            }
        }
    }

    fn signal(&self, msg: ClientMsg) {
        let _ = self.out.send(PeerOut::Signal(msg));
    }

    /// Reports the candidate pair in use when it changed (relayed when its local side is one of our TURN
    /// relayed addresses).
    fn on_selected_pair(&mut self, local: SocketAddr, remote: SocketAddr, proto: Protocol) {
        let remote_relayed = self.remote_relays.contains(&remote);
        if self.path == Some((local, remote, remote_relayed)) {
            return;
        }
        self.path = Some((local, remote, remote_relayed));
        let relay_protocol = self
            .turns
            .iter()
            .find(|s| s.alloc.relayed() == Some(local))
            .map(|s| s.transport.name().to_string());
        let path = PeerPath {
            local,
            remote,
            protocol: proto.to_string(),
            relay_protocol,
            remote_relayed,
        };
        tracing::info!(peer = %self.remote_id, %path, "candidate pair selected");
        self.emit(PeerEvent::Path(path));
    }

    fn emit(&self, event: PeerEvent) {
        let _ = self.out.send(PeerOut::Event {
            from: self.remote_id.clone(),
            event,
        });
    }

    fn set_state(&mut self, state: PeerState) {
        if self.state != state {
            self.state = state;
            self.disconnected_since = (state == PeerState::Disconnected).then(Instant::now);
            self.emit(PeerEvent::State(state));
        }
    }

    /// Polls str0m until it only has a timeout left; sends datagrams and handles events.
    fn drain(&mut self) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return t,
                Ok(Output::Transmit(t)) => {
                    if let Some(i) = self
                        .turns
                        .iter()
                        .position(|s| s.alloc.relayed() == Some(t.source))
                    {
                        self.turns[i]
                            .alloc
                            .send_to(t.destination, &t.contents, Instant::now());
                        self.flush_turn(i);
                        continue;
                    }
                    let sock = self
                        .sockets
                        .iter()
                        .find(|s| s.local_addr().ok() == Some(t.source))
                        .or_else(|| {
                            self.sockets.iter().find(|s| {
                                s.local_addr().map(|a| a.is_ipv4()).ok()
                                    == Some(t.destination.is_ipv4())
                            })
                        });
                    if let Some(sock) = sock {
                        // A full socket buffer drops the datagram, as the network would; SCTP retransmits.
                        let _ = sock.try_send_to(&t.contents, t.destination);
                    }
                }
                Ok(Output::Event(e)) => self.on_event(e),
                Err(e) => {
                    tracing::warn!(peer = %self.remote_id, error = %e, "peer connection failed");
                    self.rtc.disconnect();
                    return Instant::now() + Duration::from_millis(10);
                }
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::IceConnectionStateChange(s) => {
                tracing::debug!(peer = %self.remote_id, state = ?s, "ice state");
                match s {
                    IceConnectionState::New | IceConnectionState::Checking => {
                        if self.state != PeerState::Connected {
                            self.set_state(PeerState::Connecting)
                        }
                    }
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        if self.state == PeerState::Disconnected {
                            self.set_state(PeerState::Connected)
                        }
                    }
                    IceConnectionState::Disconnected => self.set_state(PeerState::Disconnected),
                }
            }
            Event::Connected => self.set_state(PeerState::Connected),
            Event::PeerStats(st) => {
                if let Some(pair) = st.selected_candidate_pair {
                    self.on_selected_pair(pair.local.addr, pair.remote.addr, pair.protocol);
                }
            }
            Event::ChannelOpen(id, label) => {
                if let Some(i) = self.channel_index(id) {
                    tracing::debug!(peer = %self.remote_id, %label, "data channel open");
                    self.open[i] = true;
                    self.flush_needed = true;
                    self.emit(PeerEvent::ChannelOpen(ChannelKind::from_index(i)));
                }
            }
            Event::ChannelClose(id) => {
                if let Some(i) = self.channel_index(id) {
                    self.open[i] = false;
                }
            }
            Event::ChannelData(d) => {
                let Some(i) = self.channel_index(d.id) else {
                    return;
                };
                let kind = ChannelKind::from_index(i);
                if kind == ChannelKind::File {
                    self.on_file_message(d.binary, d.data);
                } else {
                    self.emit(PeerEvent::Data {
                        kind,
                        binary: d.binary,
                        data: d.data,
                    });
                }
            }
            Event::Closed => self.set_state(PeerState::Closed),
            Event::MediaAdded(m) => {
                tracing::debug!(peer = %self.remote_id, mid = %m.mid, kind = ?m.kind, dir = ?m.direction, "media added");
                if !self.mids.iter().any(|(x, _)| *x == m.mid) {
                    self.mids.push((m.mid, m.kind));
                }
            }
            Event::MediaData(d) => self.record(d),
            _ => {}
        }
    }

    fn channel_index(&self, id: ChannelId) -> Option<usize> {
        self.channels
            .as_ref()
            .and_then(|c| c.iter().position(|x| *x == id))
    }

    fn channel_id(&self, kind: ChannelKind) -> Option<ChannelId> {
        self.channels.map(|c| c[kind.index()])
    }

    /// Writes one message; `Ok(false)` when the channel is not open or its buffer is full.
    fn write(&mut self, kind: ChannelKind, binary: bool, data: &[u8]) -> bool {
        if !self.open[kind.index()] {
            return false;
        }
        let Some(id) = self.channel_id(kind) else {
            return false;
        };
        let Some(mut ch) = self.rtc.channel(id) else {
            return false;
        };
        let ok = match ch.write(binary, data) {
            Ok(ok) => ok,
            Err(e) => {
                tracing::debug!(error = %e, "data channel write failed");
                false
            }
        };
        self.drain();
        ok
    }

    fn buffered(&mut self, kind: ChannelKind) -> usize {
        let Some(id) = self.channel_id(kind) else {
            return 0;
        };
        let n = self
            .rtc
            .channel(id)
            .map(|mut c| c.buffered_amount())
            .unwrap_or(0);
        self.drain();
        n
    }

    fn after_drain(&mut self) {
        if self.flush_needed {
            self.flush_needed = false;
            if let Some(id) = self.channel_id(ChannelKind::File) {
                if let Some(mut c) = self.rtc.channel(id) {
                    c.set_buffered_amount_low_threshold(FILE_LOW_WATER);
                }
                self.drain();
            }
        }
        // Messages first (chat must not wait behind a file), then the held file frame.
        while let Some((kind, binary, data)) = self.outbox.pop_front() {
            if !self.write(kind, binary, &data) {
                self.outbox.push_front((kind, binary, data));
                break;
            }
        }
        if !self.outbox.is_empty() {
            return;
        }
        if let Some(frame) = self.hold.take() {
            self.write_frame(frame);
        }
    }

    fn check_timers(&mut self) {
        let now = Instant::now();
        if let Some((_, since)) = &self.pending {
            if now.duration_since(*since) > OFFER_WATCHDOG {
                tracing::info!(peer = %self.remote_id, "no answer to our offer: offering again");
                self.rollback();
                self.make_offer(self.negotiated);
            }
        }
        if self.restart_wanted && self.pending.is_none() && self.negotiated {
            tracing::info!(peer = %self.remote_id, "relayed candidate withdrawn: ICE restart");
            self.restart_wanted = false;
            self.make_offer(true);
        }
        if let Some(since) = self.disconnected_since {
            if now.duration_since(since) > DISCONNECTED_RESTART && self.pending.is_none() {
                tracing::info!(peer = %self.remote_id, "connection lost: ICE restart");
                self.disconnected_since = Some(now);
                self.make_offer(true);
            }
        }
    }

    fn can_pull_frame(&mut self) -> bool {
        !self.jobs.is_empty()
            && self.hold.is_none()
            && self.outbox.is_empty()
            && self.open[ChannelKind::File.index()]
            && self.buffered(ChannelKind::File) < FILE_HIGH_WATER
    }

    fn write_frame(&mut self, frame: FileFrame) {
        let ok = match &frame {
            FileFrame::Text(t) => {
                if t.contains("\"t\":\"end\"") {
                    self.job_ended = true;
                }
                self.write(ChannelKind::File, false, t.as_bytes())
            }
            FileFrame::Binary(b) => self.write(ChannelKind::File, true, b),
        };
        if !ok {
            self.hold = Some(frame);
        }
    }

    /// The reader of the current job is done (all frames taken).
    fn finish_job(&mut self) {
        if let Some(job) = self.jobs.pop_front() {
            if !self.job_ended {
                if let Some(ack) = self.acks.remove(&job.id) {
                    let _ = ack.send(FileAck {
                        ok: false,
                        sha256: String::new(),
                        error: Some("reading the file failed".into()),
                    });
                }
            }
        }
        self.job_ended = false;
    }

    fn on_file_message(&mut self, binary: bool, data: Vec<u8>) {
        let max = self.config.max_file_bytes;
        if binary {
            let due = match self.incoming.as_mut() {
                Some(rx) => rx.push(&data, max),
                None => return,
            };
            if due {
                if let Some(rx) = &self.incoming {
                    self.emit(PeerEvent::FileProgress {
                        id: rx.id.clone(),
                        name: rx.name.clone(),
                        bytes: rx.received,
                        size: rx.size,
                    });
                }
            }
            return;
        }
        let Ok(text) = std::str::from_utf8(&data) else {
            return;
        };
        let Ok(msg) = serde_json::from_str::<FileControl>(text) else {
            tracing::debug!("unknown file-channel message ignored");
            return;
        };
        match msg {
            FileControl::Start {
                id,
                name,
                size,
                mime,
                sha256,
            } => {
                self.emit(PeerEvent::FileProgress {
                    id: id.clone(),
                    name: name.clone(),
                    bytes: 0,
                    size,
                });
                self.incoming = Some(Incoming::new(id, name, mime, size, sha256, max));
            }
            FileControl::End { id } => {
                let Some(rx) = self.incoming.take() else {
                    return;
                };
                if rx.id != id {
                    return;
                }
                let file = rx.finish();
                let ack = FileControl::Ack {
                    id: file.id.clone(),
                    ok: file.checksum_ok,
                    sha256: file.sha256.clone(),
                };
                if let Ok(s) = serde_json::to_string(&ack) {
                    self.queue_or_write(ChannelKind::File, false, s.into_bytes());
                }
                self.emit(PeerEvent::File(file));
            }
            FileControl::Ack { id, ok, sha256 } => {
                if let Some(w) = self.acks.remove(&id) {
                    let _ = w.send(FileAck {
                        ok,
                        sha256,
                        error: None,
                    });
                }
            }
        }
    }

    fn queue_or_write(&mut self, kind: ChannelKind, binary: bool, data: Vec<u8>) {
        let queued_behind = !self.outbox.is_empty() || !self.write(kind, binary, &data);
        if queued_behind && kind != ChannelKind::Lossy && self.outbox.len() < MAX_OUTBOX {
            self.outbox.push_back((kind, binary, data));
        }
    }

    fn on_cmd(&mut self, cmd: PeerCmd) {
        match cmd {
            PeerCmd::Description { offer: true, sdp } => self.on_offer(&sdp),
            PeerCmd::Description { offer: false, sdp } => self.on_answer(&sdp),
            PeerCmd::Candidate(c) => self.on_candidate(c),
            PeerCmd::Send { kind, binary, data } => self.queue_or_write(kind, binary, data),
            PeerCmd::SendFile { job, ack } => {
                self.acks.insert(job.id.clone(), ack);
                self.jobs.push_back(job);
            }
            PeerCmd::IceServers(ice) => self.on_ice_servers(ice),
            PeerCmd::Resumed => {
                if self.pending.is_some() {
                    self.rollback();
                    self.make_offer(self.negotiated && self.state != PeerState::Connected);
                } else if matches!(self.state, PeerState::Disconnected) {
                    self.make_offer(true);
                }
            }
        }
    }

    /// Drops our pending offer. Before the first negotiation completed, the pending offer carried the data
    /// channels, which str0m cannot re-add: start over with a fresh `Rtc` (nothing was connected yet).
    fn rollback(&mut self) {
        if self.pending.take().is_some() && !self.negotiated {
            self.rtc = new_rtc();
            self.path = None;
            self.channels = None;
            self.open = [false; 3];
            self.remote_set = false;
            self.described = false;
            self.mids.clear();
            self.video_started.clear();
            self.add_local_candidates();
            self.drain();
        }
    }

    fn make_offer(&mut self, ice_restart: bool) {
        let mut api = self.rtc.sdp_api();
        let mut new_channels = None;
        if self.channels.is_none() {
            let mut ids = Vec::new();
            for (label, id, ordered, reliability) in CHANNELS {
                ids.push(api.add_channel_with_config(ChannelConfig {
                    label: label.to_string(),
                    ordered,
                    reliability,
                    negotiated: Some(id),
                    protocol: String::new(),
                }));
            }
            new_channels = Some([ids[0], ids[1], ids[2]]);
            if self.config.media.enabled() {
                let dir = if self.config.media.publish.is_some() {
                    Direction::SendRecv
                } else {
                    Direction::RecvOnly
                };
                for kind in [MediaKind::Audio, MediaKind::Video] {
                    if self.mids.iter().any(|(_, k)| *k == kind) {
                        continue; // the remote's offer brought one
                    }
                    let mid = api.add_media(kind, dir, Some("switchboard".into()), None, None);
                    self.mids.push((mid, kind));
                }
            }
        }
        if ice_restart {
            api.ice_restart(true);
        }
        let applied = api.apply();
        if new_channels.is_some() {
            self.channels = new_channels;
        }
        if let Some((offer, pending)) = applied {
            self.pending = Some((pending, Instant::now()));
            let sdp = offer.to_sdp_string();
            self.described(&sdp);
            self.signal(ClientMsg::Offer {
                to: self.remote_id.clone(),
                sdp,
            });
        }
        self.drain();
    }

    fn on_offer(&mut self, sdp: &str) {
        let collision = self.pending.is_some();
        if collision && !self.polite {
            tracing::debug!(peer = %self.remote_id, "offer collision: impolite, ignoring theirs");
            return;
        }
        if collision {
            tracing::debug!(peer = %self.remote_id, "offer collision: polite, rolling back ours");
            self.rollback();
        }
        self.note_remote_relays(sdp);
        let offer = match SdpOffer::from_sdp_string(sdp) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(peer = %self.remote_id, error = %e, "unparseable offer ignored");
                return;
            }
        };
        let answer = self.rtc.sdp_api().accept_offer(offer);
        self.drain();
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(peer = %self.remote_id, error = %e, "offer rejected");
                return;
            }
        };
        self.negotiated = true;
        self.remote_set = true;
        let sdp = answer.to_sdp_string();
        self.described(&sdp);
        self.signal(ClientMsg::Answer {
            to: self.remote_id.clone(),
            sdp,
        });
        self.apply_early_candidates();
        if self.channels.is_none() {
            // Negotiated channels need no DCEP: with the offer's m=application they apply directly.
            self.make_offer(false);
        }
    }

    fn on_answer(&mut self, sdp: &str) {
        let Some((pending, _)) = self.pending.take() else {
            tracing::debug!(peer = %self.remote_id, "stale answer ignored");
            return;
        };
        self.note_remote_relays(sdp);
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(peer = %self.remote_id, error = %e, "unparseable answer ignored");
                return;
            }
        };
        let r = self.rtc.sdp_api().accept_answer(pending, answer);
        self.drain();
        if let Err(e) = r {
            tracing::warn!(peer = %self.remote_id, error = %e, "answer rejected");
            return;
        }
        self.negotiated = true;
        self.remote_set = true;
        self.apply_early_candidates();
    }

    fn on_candidate(&mut self, c: Option<CandidateInit>) {
        let Some(c) = c else { return };
        if c.candidate.trim().is_empty() {
            return;
        }
        let cand = match Candidate::from_sdp_string(c.candidate.trim()) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "remote candidate ignored");
                return;
            }
        };
        if cand.proto() != Protocol::Udp {
            return;
        }
        self.note_remote_relay(&cand);
        if self.remote_set {
            self.rtc.add_remote_candidate(cand);
            self.drain();
        } else if self.early_candidates.len() < 100 {
            self.early_candidates.push(cand);
        }
    }

    /// Remembers the relayed candidates of a remote description (to tell a pair through the remote's TURN).
    fn note_remote_relays(&mut self, sdp: &str) {
        let candidates = sdp
            .lines()
            .filter_map(|line| line.trim().strip_prefix("a="))
            .filter(|a| a.starts_with("candidate:"))
            .filter_map(|a| Candidate::from_sdp_string(a).ok());
        for cand in candidates {
            self.note_remote_relay(&cand);
        }
    }

    fn note_remote_relay(&mut self, cand: &Candidate) {
        if cand.kind() == CandidateKind::Relayed && self.remote_relays.len() < 64 {
            self.remote_relays.insert(cand.addr());
        }
    }

    fn apply_early_candidates(&mut self) {
        for c in std::mem::take(&mut self.early_candidates) {
            self.rtc.add_remote_candidate(c);
            self.drain();
        }
    }
}

/// The TCP or TLS connection to a TURN server: connects (TLS handshake with SNI and certificate check when
/// `tls` is given), then splits the byte stream into STUN messages and (padded) ChannelData frames for the
/// peer task and writes what it queues.
async fn turn_stream_task(
    idx: usize,
    addr: SocketAddr,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    tx: mpsc::Sender<NetIn>,
    wrx: mpsc::Receiver<Vec<u8>>,
) {
    let down = |reason: String| NetIn::TurnDown { idx, reason };
    let conn =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await;
    let stream = match conn {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = tx.send(down(e.to_string())).await;
            return;
        }
        Err(_) => {
            let _ = tx.send(down("connect timed out".into())).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            let _ = tx.send(down(e.to_string())).await;
            return;
        }
    };
    match tls {
        None => turn_stream_io(idx, local, stream, tx, wrx).await,
        Some((cfg, name)) => {
            let connector = tokio_rustls::TlsConnector::from(cfg);
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), connector.connect(name, stream))
                    .await;
            match handshake {
                Ok(Ok(s)) => turn_stream_io(idx, local, s, tx, wrx).await,
                Ok(Err(e)) => {
                    let _ = tx.send(down(format!("TLS handshake failed: {e}"))).await;
                }
                Err(_) => {
                    let _ = tx.send(down("TLS handshake timed out".into())).await;
                }
            }
        }
    }
}

async fn turn_stream_io<S>(
    idx: usize,
    local: SocketAddr,
    stream: S,
    tx: mpsc::Sender<NetIn>,
    mut wrx: mpsc::Receiver<Vec<u8>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        while let Some(b) = wrx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    struct AbortWriter(tokio::task::JoinHandle<()>);
    impl Drop for AbortWriter {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _writer = AbortWriter(writer);
    if tx.send(NetIn::TurnUp { idx, local }).await.is_err() {
        return;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 8192];
    let reason = loop {
        // Split the stream into STUN messages and (padded) ChannelData frames.
        loop {
            match stun::stream_frame_len(&buf) {
                Ok(Some(n)) if buf.len() >= n => {
                    let frame: Vec<u8> = buf.drain(..n).collect();
                    if tx.send(NetIn::Turn { idx, data: frame }).await.is_err() {
                        return;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    let reason = format!("bad framing: {e}");
                    let _ = tx.send(NetIn::TurnDown { idx, reason }).await;
                    return;
                }
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) => break "closed by the server".to_string(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => break e.to_string(),
        }
    };
    let _ = tx.send(NetIn::TurnDown { idx, reason }).await;
}
