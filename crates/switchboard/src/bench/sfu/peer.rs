//! One synthetic participant: a str0m `Rtc` on its own loopback UDP socket, driven by one tokio task.
//!
//! A publisher offers one send-only VP8 track (and optionally Opus), writes a stamped frame every 1/fps
//! (a keyframe periodically and when asked by PLI/FIR) and counts the RTP packets they became. Every
//! participant accepts the server's offers and counts the stamped frames it receives, their packets and their
//! one-way latency. Only frames stamped inside the measurement window count.
//!
//! With a pacing factor, a publisher's RTP goes out through a [`Pacer`] as a browser's would (at that factor
//! × the video bitrate, bursts of at most 5 ms worth); RTCP, STUN, DTLS and Opus audio (which Chromium does
//! not pace either) leave at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::crypto::dtls::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::pacer::Pacer;
use super::stamp::{self, Stamp};
use super::stats::PeerReport;

/// Phases of a run, in [`Shared::phase`].
pub const PHASE_RUN: u8 = 0;
/// Every participant stops and reports.
pub const PHASE_STOP: u8 = 1;

/// State shared by every participant of a run.
pub struct Shared {
    /// The monotonic clock of every stamp.
    pub epoch: Instant,
    /// [`PHASE_RUN`] or [`PHASE_STOP`].
    pub phase: AtomicU8,
    /// The measurement window, ns since `epoch` (`u64::MAX` until set).
    pub window_start: AtomicU64,
    pub window_end: AtomicU64,
    /// Participants whose ICE+DTLS is up.
    pub connected: AtomicUsize,
    /// Participants that have received at least one stamped frame.
    pub receiving: AtomicUsize,
    /// Frames stamped inside the window received so far, by every participant (tells when the stragglers of a
    /// run are in).
    pub window_frames: AtomicU64,
    /// Publishers send media only once this is set (after every participant has connected).
    pub media_on: AtomicBool,
    /// One DTLS certificate for every `Rtc` (generating one each would cost seconds of CPU at 500 peers).
    pub cert: Option<DtlsCert>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            phase: AtomicU8::new(PHASE_RUN),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            connected: AtomicUsize::new(0),
            receiving: AtomicUsize::new(0),
            window_frames: AtomicU64::new(0),
            media_on: AtomicBool::new(false),
            cert: str0m::crypto::from_feature_flags()
                .dtls_provider
                .generate_certificate(),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn in_window(&self, ns: u64) -> bool {
        ns >= self.window_start.load(Ordering::Relaxed)
            && ns < self.window_end.load(Ordering::Relaxed)
    }
}

/// SDP from the server (or Janus) to a participant.
#[derive(Debug)]
pub enum SigIn {
    Offer(String),
    Answer(String),
}

/// SDP from a participant to the server.
#[derive(Debug)]
pub enum SigOut {
    Offer(String),
    Answer(String),
}

/// What one participant does.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// `Some(index)`: publishes a video track stamped with this publisher index.
    pub publisher: Option<u32>,
    /// Bytes per video frame (bitrate / 8 / fps).
    pub frame_bytes: usize,
    pub fps: u32,
    /// A keyframe every this many frames.
    pub keyframe_every: u32,
    /// Also publish Opus-sized audio (50 frames/s of 160 bytes).
    pub audio: bool,
    /// Address to bind the UDP socket to.
    pub bind: std::net::IpAddr,
    /// A publisher paces its video RTP at this × the video bitrate (`frame_bytes` × 8 × `fps`); 0: no pacing,
    /// every packet of a frame leaves at once.
    pub pacing_factor: f64,
}

const AUDIO_FRAME: usize = 160;

struct Peer {
    spec: PeerSpec,
    shared: Arc<Shared>,
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    sig_out: mpsc::UnboundedSender<SigOut>,
    pending: Option<SdpPendingOffer>,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    connected: bool,
    receiving: bool,
    frame_no: u32,
    audio_no: u32,
    want_keyframe: bool,
    /// RTP packets transmitted while this is set belong to a frame inside the window.
    count_rtp: bool,
    /// A pacing publisher's queue of RTP datagrams.
    pacer: Option<Pacer>,
    /// The payload type of the Opus track once written to: its packets are not paced.
    audio_pt: Option<u8>,
    report: PeerReport,
    /// Fired once ICE+DTLS is up.
    on_connected: Option<oneshot::Sender<()>>,
}

/// Runs one participant until the run's phase is [`PHASE_STOP`].
pub async fn run(
    spec: PeerSpec,
    shared: Arc<Shared>,
    mut sig_in: mpsc::UnboundedReceiver<SigIn>,
    sig_out: mpsc::UnboundedSender<SigOut>,
    on_connected: oneshot::Sender<()>,
) -> anyhow::Result<PeerReport> {
    let socket = UdpSocket::bind(SocketAddr::new(spec.bind, 0))
        .await
        .context("binding a UDP socket")?;
    let local = socket.local_addr()?;
    let mut cfg = Rtc::builder()
        .clear_codecs()
        .enable_vp8(true)
        .enable_opus(true, false);
    if let Some(c) = &shared.cert {
        cfg = cfg.set_dtls_cert(c.clone());
    }
    let mut rtc = cfg.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").context("host candidate")?);
    let pacer = (spec.publisher.is_some() && spec.pacing_factor > 0.0).then(|| {
        let video_bps = spec.frame_bytes as f64 * 8.0 * f64::from(spec.fps.max(1));
        Pacer::new(spec.pacing_factor * video_bps, Instant::now())
    });
    let mut p = Peer {
        spec,
        shared,
        rtc,
        socket,
        local,
        sig_out,
        pending: None,
        video_mid: None,
        audio_mid: None,
        connected: false,
        receiving: false,
        frame_no: 0,
        audio_no: 0,
        want_keyframe: true,
        count_rtp: false,
        pacer,
        audio_pt: None,
        report: PeerReport::default(),
        on_connected: Some(on_connected),
    };
    if let Some(i) = p.spec.publisher {
        let mut api = p.rtc.sdp_api();
        let stream = format!("bench{i}");
        p.video_mid = Some(api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some(stream.clone()),
            Some(format!("{stream}v")),
            None,
        ));
        if p.spec.audio {
            p.audio_mid = Some(api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(stream.clone()),
                Some(format!("{stream}a")),
                None,
            ));
        }
        let (offer, pending) = api.apply().context("no offer to make")?;
        p.pending = Some(pending);
        let _ = p.sig_out.send(SigOut::Offer(offer.to_sdp_string()));
    }
    let fps = p.spec.fps.max(1);
    let mut video_tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(fps)));
    video_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let publishing = p.spec.publisher.is_some();
    let audio = publishing && p.spec.audio;
    let mut buf = vec![0u8; 2048];
    let mut sig_open = true;
    loop {
        let timeout = p.drain();
        if p.shared.phase.load(Ordering::Relaxed) == PHASE_STOP || !p.rtc.is_alive() {
            break;
        }
        // Queued RTP that is due leaves now; the rest wakes us up when it is.
        let timeout = p.pace().map_or(timeout, |release| release.min(timeout));
        let now = Instant::now();
        let wake = timeout.min(now + Duration::from_millis(100)).max(now);
        tokio::select! {
            r = p.socket.recv_from(&mut buf) => {
                if let Ok((n, src)) = r {
                    p.receive(&buf[..n], src);
                    // Take what else is queued before timers and sends.
                    for _ in 0..32 {
                        match p.socket.try_recv_from(&mut buf) {
                            Ok((n, src)) => { p.drain(); p.receive(&buf[..n], src) }
                            Err(_) => break,
                        }
                    }
                }
            }
            m = sig_in.recv(), if sig_open => match m {
                Some(m) => p.signal(m),
                None => sig_open = false,
            },
            _ = video_tick.tick(), if publishing => p.send_video(),
            _ = audio_tick.tick(), if audio => p.send_audio(),
            _ = tokio::time::sleep_until(wake.into()) => {
                if let Err(e) = p.rtc.handle_input(Input::Timeout(Instant::now())) {
                    tracing::debug!("bench peer: {e}");
                }
            }
        }
    }
    p.report.connected = p.connected;
    p.rtc.disconnect();
    Ok(p.report)
}

fn is_rtp(b: &[u8]) -> bool {
    b.len() >= 12 && (128..=191).contains(&b[0]) && !(64..=95).contains(&(b[1] & 0x7f))
}

/// Whether a pacing publisher queues this datagram: RTP, but not Opus audio (payload type `audio_pt`), which
/// Chromium's pacer lets out at once as it does RTCP, STUN and DTLS.
fn is_paced(b: &[u8], audio_pt: Option<u8>) -> bool {
    is_rtp(b) && b.get(1).map(|pt| pt & 0x7f) != audio_pt
}

impl Peer {
    /// Polls the `Rtc` until it wants a timeout; returns when.
    fn drain(&mut self) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return t,
                Ok(Output::Transmit(t)) => {
                    let rtp = is_rtp(&t.contents);
                    if self.count_rtp && rtp {
                        self.report.packets_sent += 1;
                    }
                    let paced = is_paced(&t.contents, self.audio_pt);
                    match &mut self.pacer {
                        Some(pacer) if paced => pacer.push(t.contents.into(), t.destination),
                        // A full socket buffer drops the datagram (counted as loss by the receivers).
                        _ => {
                            let _ = self.socket.try_send_to(&t.contents, t.destination);
                        }
                    }
                }
                Ok(Output::Event(ev)) => self.event(ev),
                Err(e) => {
                    tracing::debug!("bench peer failed: {e}");
                    self.rtc.disconnect();
                    return Instant::now();
                }
            }
        }
    }

    /// Sends the queued RTP that the pacer lets out now; returns when the next queued datagram may leave.
    fn pace(&mut self) -> Option<Instant> {
        let pacer = self.pacer.as_mut()?;
        let now = Instant::now();
        while let Some((datagram, destination)) = pacer.pop(now) {
            // As unpaced: a full socket buffer drops the datagram.
            let _ = self.socket.try_send_to(&datagram, destination);
        }
        pacer.next_release()
    }

    fn receive(&mut self, data: &[u8], source: SocketAddr) {
        let Ok(contents) = DatagramRecv::try_from(data) else {
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!("bench peer input: {e}");
        }
    }

    fn signal(&mut self, m: SigIn) {
        match m {
            SigIn::Offer(sdp) => {
                if self.pending.is_some() {
                    // We are the impolite side ("p_…" < "sfu"): the server rolls back its offer.
                    return;
                }
                let offer = match SdpOffer::from_sdp_string(&sdp) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!("bench peer: bad offer: {e}");
                        return;
                    }
                };
                match self.rtc.sdp_api().accept_offer(offer) {
                    Ok(answer) => {
                        let _ = self.sig_out.send(SigOut::Answer(answer.to_sdp_string()));
                    }
                    Err(e) => tracing::warn!("bench peer: cannot accept offer: {e}"),
                }
            }
            SigIn::Answer(sdp) => {
                let Some(pending) = self.pending.take() else {
                    return;
                };
                match SdpAnswer::from_sdp_string(&sdp) {
                    Ok(a) => {
                        if let Err(e) = self.rtc.sdp_api().accept_answer(pending, a) {
                            tracing::warn!("bench peer: cannot accept answer: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("bench peer: bad answer: {e}"),
                }
            }
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Connected if !self.connected => {
                self.connected = true;
                self.shared.connected.fetch_add(1, Ordering::Relaxed);
                if let Some(tx) = self.on_connected.take() {
                    let _ = tx.send(());
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                tracing::debug!(local = %self.local, "bench peer: ICE disconnected");
            }
            Event::KeyframeRequest(_) => {
                self.report.keyframe_requests += 1;
                self.want_keyframe = true;
            }
            Event::MediaData(d) => {
                let Some(s) = stamp::read(&d.data) else {
                    return;
                };
                if !self.receiving {
                    self.receiving = true;
                    self.shared.receiving.fetch_add(1, Ordering::Relaxed);
                }
                if self.shared.in_window(s.sent_ns) {
                    let now = self.shared.now_ns();
                    tracing::trace!(contiguous = d.contiguous, seq = s.seq, packets = ?d.seq_range, lat_us = (now - s.sent_ns) / 1000, "frame");
                    self.report.frames_received += 1;
                    self.shared.window_frames.fetch_add(1, Ordering::Relaxed);
                    self.report.packets_received +=
                        (**d.seq_range.end()).saturating_sub(**d.seq_range.start()) + 1;
                    let us = now.saturating_sub(s.sent_ns) / 1000;
                    self.report
                        .latencies_us
                        .push(us.min(u64::from(u32::MAX)) as u32);
                }
            }
            _ => {}
        }
    }

    fn write(&mut self, mid: Mid, codec: Codec, time: MediaTime, frame: Vec<u8>, counted: bool) {
        let Some(w) = self.rtc.writer(mid) else {
            return;
        };
        let Some(pt) = w
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
        else {
            return;
        };
        if let Err(e) = w.write(pt, Instant::now(), time, frame) {
            tracing::debug!("bench peer write: {e}");
            return;
        }
        if counted {
            self.report.frames_sent += 1;
        }
        if codec == Codec::Opus {
            self.audio_pt = Some(*pt);
        }
        self.count_rtp = counted;
        // str0m packetizes queued frames on a timeout input: do it now rather than on the next wake-up.
        if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
            tracing::debug!("bench peer: {e}");
        }
        self.drain();
        self.count_rtp = false;
    }

    fn send_video(&mut self) {
        let (Some(mid), Some(publisher)) = (self.video_mid, self.spec.publisher) else {
            return;
        };
        if !self.connected || !self.shared.media_on.load(Ordering::Relaxed) {
            return;
        }
        let n = self.frame_no;
        let key = self.want_keyframe || n.is_multiple_of(self.spec.keyframe_every.max(1));
        let sent_ns = self.shared.now_ns();
        let s = Stamp {
            publisher,
            seq: n,
            sent_ns,
        };
        let frame = stamp::video_frame(self.spec.frame_bytes, key, s);
        let time = MediaTime::new(
            u64::from(n) * 90_000 / u64::from(self.spec.fps.max(1)),
            Frequency::NINETY_KHZ,
        );
        let counted = self.shared.in_window(sent_ns);
        self.write(mid, Codec::Vp8, time, frame, counted);
        self.want_keyframe = false;
        self.frame_no = n.wrapping_add(1);
    }

    fn send_audio(&mut self) {
        let (Some(mid), Some(publisher)) = (self.audio_mid, self.spec.publisher) else {
            return;
        };
        if !self.connected || !self.shared.media_on.load(Ordering::Relaxed) {
            return;
        }
        let n = self.audio_no;
        let sent_ns = self.shared.now_ns();
        let s = Stamp {
            publisher,
            seq: n,
            sent_ns,
        };
        let frame = stamp::audio_frame(AUDIO_FRAME, s);
        let time = MediaTime::new(u64::from(n) * 960, Frequency::FORTY_EIGHT_KHZ);
        let counted = self.shared.in_window(sent_ns);
        self.write(mid, Codec::Opus, time, frame, counted);
        self.audio_no = n.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::{is_paced, is_rtp};

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 96 | 0x80; // marker + PT 96
        assert!(is_rtp(&rtp));
        let mut rtcp = rtp;
        rtcp[1] = 200; // sender report
        assert!(!is_rtp(&rtcp));
        assert!(!is_rtp(&[0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0])); // STUN
        assert!(!is_rtp(&[22u8; 20])); // DTLS handshake
    }

    #[test]
    fn only_video_rtp_is_paced() {
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 96 | 0x80; // marker + PT 96 (VP8)
        assert!(is_paced(&rtp, None));
        assert!(is_paced(&rtp, Some(111)));
        let mut opus = rtp;
        opus[1] = 111;
        assert!(!is_paced(&opus, Some(111)));
        let mut rtcp = rtp;
        rtcp[1] = 201; // receiver report
        assert!(!is_paced(&rtcp, None));
        let stun = [0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0];
        assert!(!is_paced(&stun, None));
        assert!(!is_paced(&[22u8; 20], None)); // DTLS handshake
    }
}
