//! The SFU engine: one task owning the media socket and every str0m `Rtc`.
//!
//! Flow: a datagram (or a command, or a timer) is fed to one client's `Rtc`; that client is then polled until
//! `Timeout`; what it emits (new tracks, RTP packets, keyframe requests) is queued as [`Prop`]s and routed to
//! the other clients of its room, which are in turn polled until `Timeout`. Nothing blocks: the datagrams of
//! one wake-up are queued in a [`SendBatch`] and leave together in one `sendmmsg` (UDP GSO merges a
//! subscriber's packets of equal size) at the end of the wake-up; a full socket buffer drops them, as a router
//! would. Input is read with `recvmmsg`, also every [`PEEK_EVERY`] polls of a long fan-out on one thread: a paced
//! publisher's next packet then joins the subscribers not polled yet instead of waiting for the whole fan-out.
//!
//! Forwarding is per RTP packet (str0m's RTP mode): a packet leaves for every subscriber as soon as it
//! arrives, without waiting for the rest of its frame; its payload is shared (`Arc<[u8]>`), each subscriber's
//! copy gets its own header (sequence number and timestamp rewritten by [`LayerState`]) and SRTP.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal::protocol::{ErrorCode, Permissions, ProtocolError, ServerMessage};
use signal::{MediaSignal, MediaSink};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::crypto::dtls::DtlsCert;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive, TcpType};
use str0m::rtp::{
    ExtensionValues, RtpPacket, RtpWrite, StreamTx, VideoOrientation, Vp8Descriptor, Vp8PatchError,
};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};

use crate::data::{self, DataOut, Sent};
use crate::deadlines::Deadlines;
use crate::simulcast::{self, Admit, Congestion, LayerState, Layers, LossEstimator, PacketPos};
use crate::tcp::TcpEvent;
use crate::udp::{RecvBatch, SendBatch};
use crate::BandwidthEstimation;
use std::os::fd::{AsRawFd, RawFd};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, trace, warn};

/// How long the server waits for an answer to its offer before rolling it back and offering again.
const PENDING_OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// A participant that has not offered yet gets the server's first offer this long after joining.
const FIRST_OFFER_DELAY: Duration = Duration::from_millis(1500);
/// An unanswered offer is sent again (the same SDP, so a late answer still fits it) this many times before it is
/// rolled back and replaced by a new one.
const MAX_OFFER_RESENDS: u8 = 3;
/// After failing to deliver an offer (signaling down), wait this long before trying again.
const OFFER_RETRY: Duration = Duration::from_secs(2);
/// At most one keyframe request per published track in this interval.
const KEYFRAME_THROTTLE: Duration = Duration::from_millis(500);
/// A subscriber's retransmission buffer per video stream: at most this many packets, this old (a NACK comes one
/// round trip after a loss; str0m's default keeps 3 s), and resends dropped while they would exceed this share of
/// what is sent in a second (str0m's default; the bandwidth allocation keeps 15 % of the estimate free), 5 %
/// while the subscriber's downlink is congested: there resends only add to the queue that loses packets, and a
/// subscriber whose lowest layer barely fits kept losing a fifth of its packets with 15 % (netlab 9).
const RTX_CACHE_PACKETS: usize = 1000;
const RTX_CACHE_AGE: Duration = Duration::from_millis(1500);
const RTX_RATIO_CAP: f32 = 0.15;
const RTX_RATIO_CAP_CONGESTED: f32 = 0.05;
/// Most publishers a subscriber keeps wishes about (the room size bounds it anyway).
const MAX_PREFS: usize = 1024;
/// Audio frames at or below this level (dBov, RFC 6464) count as silence.
const SILENT_LEVEL: i8 = -75;
/// Share of a subscriber's bandwidth estimate given to video (the rest: audio, RTCP, retransmissions).
const VIDEO_SHARE_PERCENT: u64 = 85;
/// `twcc` estimation: where a subscriber's estimate starts (str0m's GoogCC probes up from it at once).
const TWCC_INITIAL_BPS: u64 = 1_000_000;
/// `twcc` estimation: what the SFU asks the estimator to find room for, per audio track (bit/s; Opus and its RTP
/// headers, as str0m counts sent media).
const TWCC_AUDIO_BPS: u64 = 40_000;
/// `twcc` estimation: a layer is kept while the estimate covers this share of its bitrate (percent). GoogCC answers
/// one overuse signal (a keyframe's burst, a late receiver) with 85 % of what got through; a layer that really
/// does not fit is left at the next one, a fraction of a second later.
const TWCC_KEEP_PERCENT: u64 = 80;
/// How often each room's active speaker is re-evaluated.
const SPEAKER_INTERVAL: Duration = Duration::from_millis(300);
/// Audio level (dBov, 0 loudest, -127 silence; RFC 6464) a speaker's smoothed level must exceed.
const SPEAKER_MIN_LEVEL: f32 = -55.0;
/// A challenger must be louder than the current speaker by this much (dB) to take over (no flapping).
const SPEAKER_HYSTERESIS: f32 = 6.0;
/// Longest sleep of the engine loop.
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// `recvmmsg` calls in one wake-up before timers run (each reads up to [`crate::udp::RECV_BATCH`]).
const RECV_CALLS: usize = 4;
/// While subscribers are polled, queued messages are sent as soon as this many are waiting: the first
/// subscribers of a large fan-out do not wait for the last ones; small fan-outs share one `sendmmsg`.
const FLUSH_AT: usize = 48;
/// This many clients to poll at once are split between two threads (`sfu.parallel-fan-out`).
const PARALLEL_AT: usize = 32;
/// While one thread polls a large fan-out, every this many polls it reads what reached the socket meanwhile (a
/// paced publisher's next packet): the subscribers not polled yet then send both packets in one poll.
const PEEK_EVERY: usize = 32;

pub(crate) type ClientId = u64;

/// The maps looked up per packet (by address, ufrag, client id): a fast hash, randomly seeded per process.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Who a client is.
pub(crate) enum Role {
    /// A participant of an `sfu` room, negotiating over the signaling WebSocket.
    Participant(MediaSink),
    /// A WHIP publisher (one offer/answer, no renegotiation).
    Whip,
    /// A WHEP viewer: its offered recvonly m-lines are fed from the room's published tracks.
    Whep,
}

/// WHIP (publish) or WHEP (view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpKind {
    Whip,
    Whep,
}

impl HttpKind {
    fn prefix(self) -> &'static str {
        match self {
            HttpKind::Whip => "whip",
            HttpKind::Whep => "whep",
        }
    }
}

/// Result of a WHIP/WHEP offer.
#[derive(Debug)]
pub(crate) struct HttpSession {
    pub id: String,
    pub answer: String,
}

/// Requests from the signaling hub and the HTTP endpoints.
pub(crate) enum Command {
    Join {
        room: String,
        participant: String,
        perms: Permissions,
        sink: MediaSink,
    },
    Signal {
        room: String,
        participant: String,
        msg: MediaSignal,
    },
    Leave {
        room: String,
        participant: String,
    },
    HttpOffer {
        kind: HttpKind,
        room: String,
        offer: String,
        reply: oneshot::Sender<Result<HttpSession, String>>,
    },
    HttpDelete {
        kind: HttpKind,
        room: String,
        id: String,
        reply: oneshot::Sender<bool>,
    },
    /// Trickled ICE for a WHIP/WHEP session (`PATCH`, RFC 9725 §4.3).
    HttpPatch {
        kind: HttpKind,
        room: String,
        id: String,
        frag: crate::whip::SdpFrag,
        reply: oneshot::Sender<PatchResult>,
    },
}

/// Outcome of a WHIP/WHEP `PATCH`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PatchResult {
    /// Candidates taken (204).
    Applied,
    /// No such session (404).
    NotFound,
    /// New ICE credentials: an ICE restart, which this server does not do (422).
    IceRestart,
}

/// A track a client publishes to the SFU.
struct TrackIn {
    mid: Mid,
    kind: MediaKind,
    /// Last keyframe request per simulcast rank (the last slot: no rid).
    last_keyframe_request: [Option<Instant>; simulcast::RANKS + 1],
    /// Simulcast layers the publisher sends.
    layers: Layers,
    /// Audio: smoothed level from the RFC 6464 header extension (dBov: fast attack, slow release).
    level: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    /// To be added in the next server offer.
    ToOpen,
    /// In an offer awaiting its answer.
    Negotiating(Mid),
    /// Negotiated: media flows on this mid.
    Open(Mid),
    /// The source is gone: stop the m-line in the next offer.
    ToStop(Mid),
    /// Stopped in an offer awaiting its answer.
    NegotiatingStop(Mid),
}

/// A track forwarded to a client.
struct TrackOut {
    /// (publisher, publisher's mid); `None` for a WHEP slot not fed yet or a track whose source left while
    /// being negotiated.
    src: Option<(ClientId, Mid)>,
    kind: MediaKind,
    stream_id: String,
    track_id: String,
    state: OutState,
    /// Simulcast: the wanted quality and the layer forwarded.
    layers: LayerState,
    /// The subscriber asked not to receive this track for now (`subscribe` control message).
    paused: bool,
    /// The last payload type mapping (publisher's → this subscriber's) for the same codec.
    pt_map: Option<(Pt, Pt)>,
    /// The mid whose send stream got our retransmission buffer size ([`RTX_CACHE_AGE`]).
    rtx_sized: Option<Mid>,
}

impl TrackOut {
    fn open_mid(&self) -> Option<Mid> {
        match self.state {
            OutState::Open(m) => Some(m),
            _ => None,
        }
    }
}

/// A subscriber's wishes about one publisher (or everyone), from the `subscribe_quality` and `subscribe`
/// control messages; unset fields leave the default (high quality, everything received).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pref {
    want: Option<usize>,
    video: Option<bool>,
    audio: Option<bool>,
}

impl Pref {
    fn merge(&mut self, other: Pref) {
        self.want = other.want.or(self.want);
        self.video = other.video.or(self.video);
        self.audio = other.audio.or(self.audio);
    }
}

/// One RTP packet of a published track, to forward.
struct Fwd {
    mid: Mid,
    params: PayloadParams,
    pos: PacketPos,
    marker: bool,
    /// Header extensions passed on (the rest are the subscriber connection's own).
    audio_level: Option<i8>,
    voice_activity: Option<bool>,
    video_orientation: Option<VideoOrientation>,
    /// VP8: the payload descriptor (picture ids are rewritten per subscriber).
    vp8: Option<Vp8Descriptor>,
    /// VP9: the same.
    vp9: Option<crate::vp9::Descriptor>,
    payload: Arc<[u8]>,
}

/// What one client's output means for the others.
// Not boxed: a boxed packet would be one allocation per forwarded packet.
#[allow(clippy::large_enum_variant)]
enum Prop {
    /// The client publishes a new track.
    TrackOpened(ClientId, Mid),
    /// A published track ended (m-line inactive, or the client left).
    TrackClosed(ClientId, Mid),
    /// An RTP packet of a published track.
    Media(ClientId, Fwd),
    /// A subscriber wants a keyframe of (publisher, mid, layer); no layer = every layer.
    Keyframe(ClientId, Mid, Option<Rid>, KeyframeRequestKind),
    /// A WHEP slot wants a source.
    WhepSlot(ClientId),
    /// The client's bandwidth estimate changed: re-cap its simulcast layers.
    Estimate(ClientId),
    /// A data-channel message (channel index in [`data::CHANNELS`], binary, `<to>\n<payload>`).
    Data(ClientId, usize, bool, Vec<u8>),
}

struct Client {
    id: ClientId,
    room: String,
    participant: String,
    role: Role,
    rtc: Rtc,
    can_publish: bool,
    can_subscribe: bool,
    can_publish_data: bool,
    /// Data channels (participants only) and messages waiting for SCTP buffer space.
    data: DataOut,
    ufrag: String,
    addrs: Vec<SocketAddr>,
    pending: Option<(SdpPendingOffer, Instant)>,
    /// The pending offer's SDP and how often it was sent again for lack of an answer.
    pending_sdp: String,
    pending_resends: u8,
    /// The last offer accepted from the participant and our answer: the SDK re-sends an offer it believes lost
    /// (on glare as the impolite peer); a repeat is answered again without touching the SFU's own offer.
    last_offer: Option<(String, String)>,
    /// The participant's latest description (offer or answer): our offers list its video codecs in its order,
    /// since an answerer sends the offer's first codec (a publisher preferring H.264 keeps sending H.264).
    remote_sdp: String,
    negotiated: bool,
    /// ICE+DTLS up and ICE not disconnected: media is written to it.
    connected: bool,
    /// DTLS completed once.
    dtls_up: bool,
    /// Since when the media path has been down (or not up yet).
    down_since: Option<Instant>,
    joined_at: Instant,
    next_offer_at: Instant,
    tracks_in: Vec<TrackIn>,
    tracks_out: Vec<TrackOut>,
    out_seq: u32,
    /// When it wants the engine's attention next: its `Rtc`'s timeout, or an offer coming due.
    timeout: Instant,
    stats_in: HashMap<(Mid, Option<Rid>), u64>,
    /// Per sent stream: packets and bytes reported so far.
    stats_out: HashMap<(Mid, Option<Rid>), (u64, u64)>,
    /// Media bytes sent in total, and the worst video loss reported since the last peer stats.
    bytes_out: u64,
    egress_loss: Option<f32>,
    /// The stats of a second are being polled: report them to the estimator when the poll is done.
    report_due: bool,
    /// The longest round trip reported for a video stream since the last report.
    egress_rtt: Option<Duration>,
    /// Whether the downlink looks congested, and the delay its queue adds.
    congestion: Congestion,
    queued: bool,
    /// Packets were written to its `Rtc` since it was last polled (str0m sends them on a timeout input).
    wrote: bool,
    /// How this client's downlink is estimated (`sfu.bandwidth-estimation`; `Off` for a client that receives
    /// nothing).
    estimation: BandwidthEstimation,
    /// The downlink estimates: loss-based (`loss`), GoogCC's last one (`twcc`, bit/s), and the browser's REMB if it
    /// sends one.
    loss_bwe: LossEstimator,
    twcc_bwe: Option<u64>,
    remb: Option<u64>,
    /// The estimate in force (bit/s): the lower of the estimator's and REMB.
    bwe: Option<u64>,
    /// `twcc`: the (minimum, desired) bitrates last given to the estimator.
    bwe_goal: (u64, u64),
    /// Subscription wishes: for everyone (`""`) and per publisher participant id.
    prefs: HashMap<String, Pref>,
    /// WHIP/WHEP: the ICE ufrag of the client's offer (trickled candidates must carry it).
    remote_ufrag: Option<String>,
}

impl Client {
    /// What this subscriber wants of `publisher`'s tracks: its specific wishes over those for everyone.
    fn pref_for(&self, publisher: &str) -> Pref {
        let mut p = self.prefs.get("").copied().unwrap_or_default();
        if let Some(specific) = self.prefs.get(publisher) {
            p.merge(*specific);
        }
        p
    }

    fn sink(&self) -> Option<&MediaSink> {
        match &self.role {
            Role::Participant(s) => Some(s),
            _ => None,
        }
    }

    /// Tells the participant that the SFU could not take its SDP (`error` `bad_request`, the socket stays
    /// open), besides logging it: its SDK would otherwise wait for an answer that never comes.
    fn refuse_sdp(&self, what: &str, e: &dyn std::fmt::Display) {
        warn!(participant = %self.participant, "{what}: {e}");
        if let Some(s) = self.sink() {
            let msg = format!("sfu: {what}: {e}");
            s.send_message(&ServerMessage::error(&ProtocolError::new(
                ErrorCode::BadRequest,
                msg,
            )));
        }
    }

    fn wants_offer(&self, now: Instant) -> bool {
        self.offer_due().is_some_and(|at| now >= at)
    }

    /// When [`Client::negotiate`] has an offer to make (or to make again) with what the client has now: none
    /// while there is nothing to offer.
    fn offer_due(&self) -> Option<Instant> {
        if !matches!(self.role, Role::Participant(_)) || !self.rtc.is_alive() {
            return None;
        }
        let due = match &self.pending {
            Some((_, at)) => *at + PENDING_OFFER_TIMEOUT,
            None if self
                .tracks_out
                .iter()
                .any(|t| matches!(t.state, OutState::ToOpen | OutState::ToStop(_))) =>
            {
                self.next_offer_at
            }
            None => return None,
        };
        let due = due.max(self.next_offer_at);
        Some(if self.negotiated {
            due
        } else {
            due.max(self.joined_at + FIRST_OFFER_DELAY)
        })
    }

    /// Forgets the pending offer (its changes were never applied).
    fn rollback(&mut self) {
        self.pending = None;
        self.tracks_out.retain_mut(|t| match t.state {
            OutState::Negotiating(_) => {
                t.state = OutState::ToOpen;
                t.src.is_some()
            }
            OutState::NegotiatingStop(m) => {
                t.state = OutState::ToStop(m);
                true
            }
            _ => true,
        });
    }

    /// Sends a server offer when forwarded tracks were added or removed.
    fn negotiate(&mut self, now: Instant) {
        if !self.wants_offer(now) {
            return;
        }
        if self.pending.is_some() && self.pending_resends < MAX_OFFER_RESENDS {
            // A busy participant may answer late: the same offer again (a new one would no longer match
            // the late answer's m-lines), the participant answers whichever it sees.
            self.pending_resends += 1;
            if let Some((_, at)) = &mut self.pending {
                *at = now;
            }
            let sdp = self.pending_sdp.clone();
            let sent = self.sink().is_some_and(|s| s.send(MediaSignal::Offer(sdp)));
            debug!(participant = %self.participant, sent, resend = self.pending_resends, "no answer to the SFU's offer yet: sent again");
            return;
        }
        if self.pending.is_some() {
            debug!(participant = %self.participant, "no answer to the SFU's offer: offering anew");
            self.rollback();
        }
        let mut api = self.rtc.sdp_api();
        for t in &mut self.tracks_out {
            match t.state {
                OutState::ToOpen => {
                    let mid = api.add_media(
                        t.kind,
                        Direction::SendOnly,
                        Some(t.stream_id.clone()),
                        Some(t.track_id.clone()),
                        None,
                    );
                    t.state = OutState::Negotiating(mid);
                }
                OutState::ToStop(m) => {
                    api.stop_media(m);
                    t.state = OutState::NegotiatingStop(m);
                }
                _ => {}
            }
        }
        let Some((offer, pending)) = api.apply() else {
            self.rollback();
            self.next_offer_at = now + OFFER_RETRY;
            return;
        };
        let sdp = crate::sdp::follow_codec_order(&self.remote_sdp, &offer.to_sdp_string());
        let sent = self
            .sink()
            .is_some_and(|s| s.send(MediaSignal::Offer(sdp.clone())));
        if sent {
            debug!(participant = %self.participant, "SFU offer sent");
            self.pending = Some((pending, now));
            self.pending_sdp = sdp;
            self.pending_resends = 0;
        } else {
            debug!(participant = %self.participant, "participant not reachable: offer later");
            self.pending = Some((pending, now));
            self.rollback();
            self.next_offer_at = now + OFFER_RETRY;
        }
    }

    fn refresh_ufrag(&mut self, by_ufrag: &mut FastMap<String, ClientId>) {
        let creds = self.rtc.direct_api().local_ice_credentials();
        if creds.ufrag != self.ufrag {
            by_ufrag.remove(&self.ufrag);
            by_ufrag.insert(creds.ufrag.clone(), self.id);
            self.ufrag = creds.ufrag;
        }
    }

    fn on_event(&mut self, ev: Event, props: &mut VecDeque<Prop>) {
        match ev {
            Event::Connected => {
                info!(room = %self.room, participant = %self.participant, "SFU media connected");
                self.dtls_up = true;
                self.set_connected(true, props);
            }
            Event::IceConnectionStateChange(s) => {
                debug!(participant = %self.participant, state = ?s, "ICE state");
                match s {
                    IceConnectionState::Disconnected => self.set_connected(false, props),
                    IceConnectionState::Connected | IceConnectionState::Completed
                        if self.dtls_up =>
                    {
                        self.set_connected(true, props)
                    }
                    _ => {}
                }
            }
            Event::MediaAdded(m) => {
                if m.direction.is_receiving() {
                    self.publish(m.mid, m.kind, props);
                } else if m.direction.is_sending() && matches!(self.role, Role::Whep) {
                    self.tracks_out.push(TrackOut {
                        src: None,
                        kind: m.kind,
                        stream_id: String::new(),
                        track_id: String::new(),
                        state: OutState::Open(m.mid),
                        layers: LayerState::default(),
                        paused: false,
                        pt_map: None,
                        rtx_sized: None,
                    });
                    props.push_back(Prop::WhepSlot(self.id));
                }
            }
            Event::MediaChanged(m) => {
                let had = self.tracks_in.iter().any(|t| t.mid == m.mid);
                if had && !m.direction.is_receiving() {
                    self.tracks_in.retain(|t| t.mid != m.mid);
                    props.push_back(Prop::TrackClosed(self.id, m.mid));
                } else if !had && m.direction.is_receiving() && self.can_publish {
                    if let Some(kind) = self.rtc.media(m.mid).map(|x| x.kind()) {
                        // A publisher's transceiver reused for new media.
                        self.tracks_in.push(TrackIn {
                            mid: m.mid,
                            kind,
                            last_keyframe_request: Default::default(),
                            layers: Layers::default(),
                            level: -127.0,
                        });
                        props.push_back(Prop::TrackOpened(self.id, m.mid));
                    }
                }
            }
            Event::RtpPacket(p) => self.on_rtp(p, props),
            Event::KeyframeRequest(req) => {
                debug!(participant = %self.participant, mid = %req.mid, kind = ?req.kind, "keyframe request from a subscriber");
                metrics::counter!("sfu_keyframe_requests_in_total", "kind" => keyframe_label(req.kind))
                    .increment(1);
                if let Some(t) = self
                    .tracks_out
                    .iter()
                    .find(|t| t.open_mid() == Some(req.mid))
                {
                    if let Some((p, m)) = t.src {
                        props.push_back(Prop::Keyframe(p, m, t.layers.current, req.kind));
                    }
                }
            }
            Event::ChannelData(d) => {
                if !self.can_publish_data {
                    return;
                }
                if let Some(i) = self.data.index_of(d.id) {
                    props.push_back(Prop::Data(self.id, i, d.binary, d.data));
                }
            }
            Event::EgressBitrateEstimate(BweKind::Remb { estimate, .. })
                if self.estimation != BandwidthEstimation::Off =>
            {
                self.remb = Some(estimate.as_u64());
                self.update_estimate(props);
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. })
                if self.estimation == BandwidthEstimation::Twcc =>
            {
                self.twcc_bwe = Some(estimate.as_u64());
                self.update_estimate(props);
            }
            Event::PeerStats(_) => {
                // Once a second, just before the per-stream stats: the downlink report waits for them
                // ([`Client::downlink_report`] once the poll is done).
                self.report_due = true;
            }
            Event::ChannelOpen(id, label) => {
                debug!(participant = %self.participant, %label, ?id, "data channel open");
            }
            Event::MediaIngressStats(s) => {
                let last = self.stats_in.entry((s.mid, s.rid)).or_insert(0);
                let delta = s.packets.saturating_sub(*last);
                *last = s.packets;
                let kind = self.rtc.media(s.mid).map(|m| m.kind());
                metrics::counter!("sfu_rtp_packets_in_total", "kind" => kind_label(kind))
                    .increment(delta);
            }
            Event::MediaEgressStats(s) => {
                trace!(participant = %self.participant, mid = %s.mid, loss = ?s.loss, rtt = ?s.rtt, bytes = s.bytes, nacks = s.nacks, plis = s.plis, packets = s.packets, "egress stats");
                let last = self.stats_out.entry((s.mid, s.rid)).or_insert((0, 0));
                let delta = s.packets.saturating_sub(last.0);
                self.bytes_out += s.bytes.saturating_sub(last.1);
                *last = (s.packets, s.bytes);
                let kind = self.rtc.media(s.mid).map(|m| m.kind());
                if let (Some(MediaKind::Video), Some(loss)) = (kind, s.loss) {
                    // Fraction lost from the subscriber's receiver reports (RTCP RR), per video stream.
                    self.egress_loss = Some(self.egress_loss.map_or(loss, |l| l.max(loss)));
                }
                if let (Some(MediaKind::Video), Some(rtt)) = (kind, s.rtt) {
                    self.egress_rtt = Some(self.egress_rtt.map_or(rtt, |r| r.max(rtt)));
                }
                metrics::counter!("sfu_rtp_packets_out_total", "kind" => kind_label(kind))
                    .increment(delta);
            }
            _ => {}
        }
    }

    /// The client publishes a track on `mid` (once per mid): the room's subscribers get it offered.
    fn publish(&mut self, mid: Mid, kind: MediaKind, props: &mut VecDeque<Prop>) {
        if !self.can_publish {
            warn!(participant = %self.participant, "offered media without the publish grant: ignored");
            return;
        }
        if self.tracks_in.iter().any(|t| t.mid == mid) {
            return;
        }
        debug!(participant = %self.participant, %mid, ?kind, "track published");
        self.tracks_in.push(TrackIn {
            mid,
            kind,
            last_keyframe_request: Default::default(),
            layers: Layers::default(),
            level: -127.0,
        });
        props.push_back(Prop::TrackOpened(self.id, mid));
    }

    /// A packet of a track this client publishes: layer bitrates, audio level, then to the room.
    fn on_rtp(&mut self, p: RtpPacket, props: &mut VecDeque<Prop>) {
        let Some((mid, rid)) = self
            .rtc
            .direct_api()
            .stream_rx(&p.header.ssrc)
            .map(|rx| (rx.mid(), rx.rid()))
        else {
            return;
        };
        let Some(t) = self.tracks_in.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        let pt = p.header.payload_type;
        let Some(params) = self.rtc.codec_config().find(|c| c.pt() == pt).copied() else {
            trace!(participant = %self.participant, %pt, "RTP packet of an unknown payload type");
            return;
        };
        let codec = params.spec().codec;
        // VP8's and VP9's descriptors are parsed once: they tell where a keyframe starts, and their picture ids
        // are rewritten per subscriber.
        let vp8 = (codec == Codec::Vp8)
            .then(|| Vp8Descriptor::parse(&p.payload).ok())
            .flatten();
        let vp9 = (codec == Codec::Vp9)
            .then(|| crate::vp9::Descriptor::parse(&p.payload))
            .flatten();
        let keyframe = t.kind == MediaKind::Video
            && match (&vp8, &vp9) {
                (Some(d), _) => d.starts_keyframe(&p.payload),
                (_, Some(d)) => d.starts_keyframe(),
                _ => crate::keyframe::starts_keyframe(codec, &p.payload),
            };
        if let Some(rid) = rid {
            t.layers.seen(rid, p.timestamp, p.payload.len());
        }
        let ext = &p.header.ext_vals;
        if let Some(l) = ext.audio_level {
            let l = f32::from(l.max(-127));
            t.level = if l > t.level {
                l
            } else {
                t.level * 0.97 + l * 0.03
            };
        }
        props.push_back(Prop::Media(
            self.id,
            Fwd {
                mid,
                params,
                pos: PacketPos {
                    rid,
                    seq: *p.seq_no,
                    time: p.header.timestamp,
                    clock_rate: p.time.frequency().get(),
                    arrival: p.timestamp,
                    keyframe,
                },
                marker: p.header.marker,
                audio_level: ext.audio_level,
                voice_activity: ext.voice_activity,
                video_orientation: ext.video_orientation,
                vp8,
                vp9,
                payload: p.payload,
            },
        ));
    }

    /// Once a second, after the per-stream stats: the media bytes sent and the worst loss reported since the last
    /// time feed the loss-based downlink estimate.
    fn downlink_report(&mut self, props: &mut VecDeque<Prop>) {
        let loss = self.egress_loss.take();
        let rtt = self.egress_rtt.take();
        trace!(participant = %self.participant, bytes_out = self.bytes_out, ?loss, ?rtt, "downlink report");
        let was = self.congestion.congested();
        let congested = self.congestion.report(rtt);
        if congested != was {
            debug!(participant = %self.participant, congested, ?loss, ?rtt, queue_delay = ?self.congestion.queue_delay(), "downlink congestion");
            // Resends share the congested link with the media: fewer of them while it is.
            let cap = self.rtx_ratio_cap();
            for t in &mut self.tracks_out {
                if let (Some(mid), MediaKind::Video) = (t.open_mid(), t.kind) {
                    if let Some(tx) = self.rtc.direct_api().stream_tx_by_mid(mid, None) {
                        new_rtx_buffer(tx, cap, false);
                        t.rtx_sized = Some(mid);
                    }
                }
            }
        }
        match self.estimation {
            // The estimate moves on its own; once a second the layers' measured bitrates may have, which the
            // estimator's goal follows ([`Engine::allocate`]).
            BandwidthEstimation::Twcc => props.push_back(Prop::Estimate(self.id)),
            BandwidthEstimation::Loss => {
                if self
                    .loss_bwe
                    .report(Instant::now(), self.bytes_out, loss)
                    .is_some()
                {
                    self.update_estimate(props);
                }
            }
            BandwidthEstimation::Off => {}
        }
    }

    /// The share of resends in what is sent to this subscriber ([`RTX_RATIO_CAP`], less while its link is
    /// congested).
    fn rtx_ratio_cap(&self) -> f32 {
        if self.congestion.congested() {
            RTX_RATIO_CAP_CONGESTED
        } else {
            RTX_RATIO_CAP
        }
    }

    /// The downlink estimate in force changed: the engine re-caps this client's layers.
    fn update_estimate(&mut self, props: &mut VecDeque<Prop>) {
        let (own, name) = match self.estimation {
            BandwidthEstimation::Twcc => (self.twcc_bwe, "twcc"),
            _ => (self.loss_bwe.estimate(), "loss"),
        };
        let (bwe, source) = match (own, self.remb) {
            (Some(a), Some(b)) if b < a => (Some(b), "remb"),
            (Some(a), _) => (Some(a), name),
            (None, b) => (b, "remb"),
        };
        if bwe != self.bwe {
            debug!(participant = %self.participant, bps = ?bwe, source, "downlink estimate");
            metrics::counter!("sfu_bandwidth_estimates_total", "source" => source).increment(1);
            self.bwe = bwe;
            props.push_back(Prop::Estimate(self.id));
        }
    }

    fn set_connected(&mut self, up: bool, props: &mut VecDeque<Prop>) {
        if up == self.connected {
            return;
        }
        self.connected = up;
        if !up {
            self.down_since = Some(Instant::now());
            return;
        }
        self.down_since = None;
        // Decoding starts at a keyframe: ask the publishers of everything this client receives.
        for t in &self.tracks_out {
            if let (Some((p, m)), Some(_)) = (t.src, t.open_mid()) {
                props.push_back(Prop::Keyframe(p, m, None, KeyframeRequestKind::Pli));
            }
        }
    }

    fn request_keyframe(
        &mut self,
        mid: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        now: Instant,
    ) {
        let Some(t) = self.tracks_in.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        if t.kind != MediaKind::Video {
            return;
        }
        // A simulcast track without a layer named: every layer.
        let mut rids = [None; simulcast::RANKS];
        match rid {
            Some(r) => rids[0] = Some(r),
            None if t.layers.is_simulcast() => {
                for (slot, r) in rids.iter_mut().zip(t.layers.all()) {
                    *slot = Some(r);
                }
            }
            None => {}
        }
        let plain = rids[0].is_none();
        for r in rids
            .iter()
            .copied()
            .filter(|r| r.is_some() || plain)
            .take(if plain { 1 } else { simulcast::RANKS })
        {
            let slot = r.map_or(simulcast::RANKS, |r| simulcast::rank(&r));
            let last = &mut t.last_keyframe_request[slot];
            if last.is_some_and(|at| now < at + KEYFRAME_THROTTLE) {
                metrics::counter!("sfu_keyframe_requests_throttled_total").increment(1);
                continue;
            }
            *last = Some(now);
            match self.rtc.direct_api().stream_rx_by_mid(mid, r) {
                Some(rx) => {
                    debug!(participant = %self.participant, %mid, rid = ?r, ?kind, "keyframe request to the publisher");
                    rx.request_keyframe(kind);
                    metrics::counter!("sfu_keyframe_requests_out_total", "kind" => keyframe_label(kind))
                        .increment(1);
                }
                None => {
                    trace!(participant = %self.participant, %mid, rid = ?r, "keyframe request: no such stream yet")
                }
            }
        }
    }
}

/// The patch giving a VP8 payload descriptor `pic` and `tl0` (a 7-bit picture id keeps 7 bits).
fn vp8_patch(
    d: &Vp8Descriptor,
    pic: Option<u16>,
    tl0: Option<u8>,
) -> Result<str0m::rtp::Vp8Patch, Vp8PatchError> {
    let build = |pic: Option<u16>| {
        let mut b = d.patch();
        if let Some(p) = pic {
            b = b.picture_id(p);
        }
        if let Some(t) = tl0 {
            b = b.tl0_pic_idx(t);
        }
        b.build()
    };
    match build(pic) {
        Err(Vp8PatchError::PictureIdTooLarge) => build(pic.map(|p| p & 0x7f)),
        r => r,
    }
}

/// ICE-TCP connections' outboxes, by client address (shared with the fan-out thread).
type TcpConns = HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>;

/// A batch of the parallel fan-out for its thread: the clients it polls (moved out of the engine's map until
/// it returns them) and what their polls produce. One job goes back and forth, so its buffers are reused.
struct FanOutJob {
    clients: Vec<Box<Client>>,
    out: SendBatch,
    props: VecDeque<Prop>,
    dead: Vec<ClientId>,
    tcp: Option<Arc<TcpConns>>,
    now: Instant,
    fd: RawFd,
}

/// The thread that polls half of a large fan-out ([`PARALLEL_AT`] clients or more), started once (a thread per
/// batch cost ~3 % of the server's CPU, and its start delayed that half).
struct FanOut {
    jobs: std::sync::mpsc::Sender<Box<FanOutJob>>,
    done: std::sync::mpsc::Receiver<Box<FanOutJob>>,
    /// The job, while the engine holds it.
    idle: Option<Box<FanOutJob>>,
}

impl FanOut {
    fn start(gso: bool) -> std::io::Result<FanOut> {
        let (jobs, todo) = std::sync::mpsc::channel::<Box<FanOutJob>>();
        let (back, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sfu-fan-out".into())
            .spawn(move || {
                // Ends when the engine (the jobs' sender) is gone.
                for mut job in todo {
                    let tcp = job.tcp.take().unwrap_or_default();
                    let FanOutJob {
                        clients,
                        out,
                        props,
                        dead,
                        now,
                        fd,
                        ..
                    } = &mut *job;
                    let mut sink = PollSink {
                        fd: *fd,
                        out,
                        tcp: &tcp,
                        props,
                        dead,
                    };
                    for c in clients.iter_mut() {
                        poll_client(c, *now, &mut sink);
                    }
                    out.flush(*fd);
                    job.tcp = Some(tcp);
                    if back.send(job).is_err() {
                        break;
                    }
                }
            })?;
        Ok(FanOut {
            jobs,
            done,
            idle: Some(Box::new(FanOutJob {
                clients: Vec::new(),
                out: SendBatch::new(gso),
                props: VecDeque::new(),
                dead: Vec::new(),
                tcp: None,
                now: Instant::now(),
                fd: -1,
            })),
        })
    }
}

/// Where a polled client's output goes.
struct PollSink<'a> {
    fd: RawFd,
    out: &'a mut SendBatch,
    tcp: &'a HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    props: &'a mut VecDeque<Prop>,
    dead: &'a mut Vec<ClientId>,
}

/// Polls one client until `Timeout`: its datagrams to `sink.out` (sent as soon as [`FLUSH_AT`] messages
/// wait), what it means for the others to `sink.props`.
fn poll_client(c: &mut Client, now: Instant, sink: &mut PollSink) {
    c.queued = false;
    c.negotiate(now);
    if std::mem::take(&mut c.wrote) {
        // Forwarded packets wait in str0m's send queue until time moves.
        if let Err(e) = c.rtc.handle_input(Input::Timeout(now)) {
            warn!(participant = %c.participant, "SFU peer failed: {e}");
            c.rtc.disconnect();
        }
    }
    if c.data.queued() {
        c.data.flush(&mut c.rtc);
    }
    loop {
        if !c.rtc.is_alive() {
            c.timeout = now;
            sink.dead.push(c.id);
            break;
        }
        match c.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                c.timeout = c.offer_due().map_or(t, |o| o.min(t));
                break;
            }
            Ok(Output::Transmit(t)) => {
                if t.proto == Protocol::Tcp {
                    let sent = sink
                        .tcp
                        .get(&t.destination)
                        .is_some_and(|out| out.try_send(t.contents.to_vec()).is_ok());
                    if !sent {
                        trace!(dest = %t.destination, "SFU TCP send dropped");
                    }
                } else {
                    sink.out.push(sink.fd, t.destination, &t.contents);
                }
            }
            Ok(Output::Event(ev)) => c.on_event(ev, sink.props),
            Err(e) => {
                warn!(participant = %c.participant, "SFU peer failed: {e}");
                c.rtc.disconnect();
            }
        }
    }
    if std::mem::take(&mut c.report_due) {
        c.downlink_report(sink.props);
    }
    if sink.out.len() >= FLUSH_AT {
        sink.out.flush(sink.fd);
    }
}

/// Gives a subscriber's video send stream an empty retransmission buffer ([`RTX_CACHE_PACKETS`],
/// [`RTX_CACHE_AGE`]) whose resends may take `cap` of what is sent. With `fresh_share` the share is counted anew
/// (str0m keeps counting across a new buffer unless the cap is switched off in between).
fn new_rtx_buffer(tx: &mut StreamTx, cap: f32, fresh_share: bool) {
    if fresh_share {
        tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, None);
    }
    tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(cap));
}

fn kind_label(kind: Option<MediaKind>) -> &'static str {
    match kind {
        Some(MediaKind::Audio) => "audio",
        Some(MediaKind::Video) => "video",
        None => "unknown",
    }
}

fn keyframe_label(kind: KeyframeRequestKind) -> &'static str {
    match kind {
        KeyframeRequestKind::Pli => "pli",
        KeyframeRequestKind::Fir => "fir",
    }
}

/// Whether two SDP offers are the same offer, sent again: equal but for what ICE gathering changed in between (a
/// browser re-sending `localDescription` includes the candidates trickled since, and the default candidate's
/// port in its `m=` lines, `c=` and `a=rtcp:`). Taking such a repeat for a new offer would roll back the SFU's
/// pending offer, which the participant may be answering already: both sides then disagree on the m-lines, and
/// every later offer of the SFU fails at the participant.
fn same_offer(a: &str, b: &str) -> bool {
    fn lines(s: &str) -> impl Iterator<Item = (&str, &str)> {
        s.lines()
            .map(str::trim_end)
            .filter(|l| {
                !l.starts_with("a=candidate:")
                    && *l != "a=end-of-candidates"
                    && !l.starts_with("c=")
                    && !l.starts_with("a=rtcp:")
            })
            .map(|l| match l.strip_prefix("m=") {
                // "m=<media> <port> <proto> <fmt>...": everything but the port.
                Some(m) => {
                    let (media, rest) = m.split_once(' ').unwrap_or((m, ""));
                    let rest = rest.split_once(' ').map_or("", |(_, r)| r);
                    (media, rest)
                }
                None => (l, ""),
            })
    }
    a == b || lines(a).eq(lines(b))
}

/// A valid msid id (1 to 64 token characters, RFC 8830).
fn valid_msid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "-"
        && s.bytes().all(|b| {
            matches!(b, 0x21 | 0x23..=0x27 | 0x2A..=0x2B | 0x2D..=0x2E | 0x30..=0x39 | 0x41..=0x5A | 0x5E..=0x7D)
        })
}

pub(crate) struct Engine {
    socket: Arc<UdpSocket>,
    /// The media socket's descriptor (owned by `socket`) for batched sends.
    fd: RawFd,
    /// Datagrams of the current wake-up, sent when it ends (or when [`FLUSH_AT`] wait).
    out: SendBatch,
    /// `sfu.parallel-fan-out`, and more than one core: the thread that polls half of a large fan-out.
    fan_out: Option<FanOut>,
    /// Destination of received datagrams, as str0m knows our candidates.
    destination: SocketAddr,
    candidates: Vec<Candidate>,
    rx: Option<mpsc::UnboundedReceiver<Command>>,
    /// ICE-TCP: packets from the TCP side, the address of our TCP candidate, each connection's outbox.
    tcp_rx: Option<mpsc::Receiver<TcpEvent>>,
    tcp_destination: Option<SocketAddr>,
    tcp_conns: Arc<TcpConns>,
    /// Boxed: a parallel fan-out lends half of them to its thread by moving the boxes.
    clients: FastMap<ClientId, Box<Client>>,
    /// Each client's [`Client::timeout`] as of its last poll.
    deadlines: Deadlines<ClientId>,
    next_id: ClientId,
    by_addr: FastMap<SocketAddr, ClientId>,
    by_ufrag: FastMap<String, ClientId>,
    /// (room, participant id) → client.
    by_participant: HashMap<(String, String), ClientId>,
    /// Participants of `sfu` rooms (kept while their `Rtc` is recreated).
    members: HashMap<(String, String), (Permissions, MediaSink)>,
    rooms: HashMap<String, Vec<ClientId>>,
    props: VecDeque<Prop>,
    /// Clients to poll, in the order they were marked.
    dirty: VecDeque<ClientId>,
    dead: Vec<ClientId>,
    /// `recvmmsg` buffers (taken out while their datagrams are handled).
    rx_batch: Option<Box<RecvBatch>>,
    /// Peeks during a fan-out that read datagrams: (clients queued then, still to poll; datagrams received before
    /// it, still waiting in `unsent_rx`).
    peeks: VecDeque<(usize, usize)>,
    scratch: Vec<ClientId>,
    /// A data-channel message being fanned out, with its `<from>\n` header.
    data_buf: Vec<u8>,
    /// Active speaker per room (participant id), and when the rooms are looked at next.
    speakers: HashMap<String, String>,
    speaker_changes: Vec<(String, String)>,
    next_speaker_check: Instant,
    /// The DTLS certificate of every `Rtc`: generating one per client costs ~0.5 s of CPU (more in a debug
    /// build), which would delay every join and a whole `auto` room's move to the SFU. One server certificate
    /// for all sessions, as other SFUs do; its fingerprint is in every answer.
    dtls_cert: Option<DtlsCert>,
    /// `[sfu]` settings.
    bandwidth_estimation: BandwidthEstimation,
    drop_silent_audio_above: usize,
    media_timeout: Duration,
    /// (track index, new cap) while re-capping one subscriber.
    caps: Vec<(usize, usize)>,
    /// Kernel receive times of the received RTP packets whose forwarded copies are not all sent yet.
    unsent_rx: Vec<std::time::SystemTime>,
    /// Packet copies written to subscribers so far (tells which datagrams were forwarded).
    forwarded: u64,
    /// VP9 payloads of the packet being forwarded with rewritten picture ids.
    vp9_copies: crate::vp9::Copies,
    /// `sfu_forward_delay_seconds`.
    forward_delay: metrics::Histogram,
}

impl Engine {
    pub(crate) fn new(
        socket: UdpSocket,
        local: SocketAddr,
        public: Vec<SocketAddr>,
        rx: mpsc::UnboundedReceiver<Command>,
        config: &crate::SfuConfig,
        tcp: Option<(u16, mpsc::Receiver<TcpEvent>)>,
    ) -> Result<Engine, String> {
        let mut candidates = Vec::new();
        for a in &public {
            candidates.push(
                Candidate::host(*a, "udp").map_err(|e| format!("bad host candidate {a}: {e}"))?,
            );
        }
        // ICE-TCP: a passive TCP candidate per public address, for clients without UDP.
        let tcp_port = tcp.as_ref().map(|(port, _)| *port);
        if let Some(port) = tcp_port {
            for a in &public {
                let addr = SocketAddr::new(a.ip(), port);
                candidates.push(
                    Candidate::builder()
                        .tcp()
                        .host(addr)
                        .tcptype(TcpType::Passive)
                        .build()
                        .map_err(|e| format!("bad TCP host candidate {addr}: {e}"))?,
                );
            }
        }
        let destination = if public.contains(&local) {
            local
        } else {
            public.first().copied().unwrap_or(local)
        };
        Ok(Engine {
            fd: socket.as_raw_fd(),
            out: SendBatch::new(config.udp_gso),
            fan_out: (config.parallel_fan_out
                && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
            .then(|| FanOut::start(config.udp_gso))
            .and_then(|r| {
                r.map_err(|e| warn!("no parallel fan-out: cannot start its thread: {e}"))
                    .ok()
            }),
            socket: Arc::new(socket),
            destination,
            candidates,
            rx: Some(rx),
            tcp_destination: tcp_port.map(|port| SocketAddr::new(destination.ip(), port)),
            tcp_rx: tcp.map(|(_, rx)| rx),
            tcp_conns: Arc::new(HashMap::new()),
            clients: FastMap::default(),
            deadlines: Deadlines::default(),
            next_id: 1,
            by_addr: FastMap::default(),
            by_ufrag: FastMap::default(),
            by_participant: HashMap::new(),
            members: HashMap::new(),
            rooms: HashMap::new(),
            props: VecDeque::new(),
            dirty: VecDeque::new(),
            dead: Vec::new(),
            rx_batch: Some(Box::new(RecvBatch::new())),
            peeks: VecDeque::new(),
            scratch: Vec::new(),
            data_buf: Vec::new(),
            speakers: HashMap::new(),
            speaker_changes: Vec::new(),
            next_speaker_check: Instant::now(),
            dtls_cert: str0m::crypto::from_feature_flags()
                .dtls_provider
                .generate_certificate(),
            bandwidth_estimation: config.bandwidth_estimation,
            drop_silent_audio_above: config.drop_silent_audio_above,
            media_timeout: Duration::from_secs(config.media_timeout_secs),
            caps: Vec::new(),
            unsent_rx: Vec::with_capacity(crate::udp::RECV_BATCH),
            forwarded: 0,
            vp9_copies: Default::default(),
            forward_delay: metrics::histogram!("sfu_forward_delay_seconds"),
        })
    }

    pub(crate) async fn run(mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let socket = self.socket.clone();
        // Kernel receive times: the forwarding delay (`sfu_forward_delay_seconds`) of an RTP packet runs from its
        // reaching the socket to its last forwarded copy being handed back to the kernel.
        if let Err(e) = udpio::enable_rx_timestamps(self.fd) {
            debug!("no receive timestamps on the SFU socket: {e}");
        }
        let mut tcp_rx = self.tcp_rx.take();
        loop {
            let now = Instant::now();
            let next = self
                .deadlines
                .next()
                .unwrap_or(now + MAX_SLEEP)
                .min(now + MAX_SLEEP)
                .max(now + Duration::from_millis(1));
            enum Wake {
                Udp(std::io::Result<()>),
                Tcp(Option<TcpEvent>),
                Cmd(Option<Command>),
                Timer,
            }
            let tcp_next = async {
                match tcp_rx.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                r = socket.readable() => Wake::Udp(r),
                e = tcp_next => Wake::Tcp(e),
                c = rx.recv() => Wake::Cmd(c),
                _ = tokio::time::sleep_until(next.into()) => Wake::Timer,
            };
            match wake {
                Wake::Udp(Ok(())) => {
                    for _ in 0..RECV_CALLS {
                        let n =
                            match socket.try_io(tokio::io::Interest::READABLE, || self.take_in()) {
                                Ok(n) => n,
                                Err(e) => {
                                    if e.kind() != std::io::ErrorKind::WouldBlock {
                                        debug!("SFU socket receive error: {e}");
                                    }
                                    break;
                                }
                            };
                        // Then every subscriber is polled once for the whole batch: a subscriber's packets leave
                        // together (one GSO message), and a burst (a frame) reaches each subscriber as early as
                        // one subscriber after another allows.
                        self.drain();
                        self.flush();
                        if n < crate::udp::RECV_BATCH {
                            break;
                        }
                    }
                }
                Wake::Udp(Err(e)) => debug!("SFU socket receive error: {e}"),
                Wake::Tcp(Some(ev)) => {
                    self.on_tcp(ev, Instant::now());
                    self.drain();
                }
                Wake::Tcp(None) => tcp_rx = None,
                Wake::Cmd(Some(c)) => self.on_command(c, Instant::now()),
                Wake::Cmd(None) => {
                    info!("SFU engine stopping");
                    return;
                }
                Wake::Timer => {}
            }
            self.on_timers(Instant::now());
            self.drain();
            self.flush();
        }
    }

    /// Reads what waits on the media socket (one `recvmmsg`). Each datagram is handed to its client's `Rtc`, which
    /// is polled at once (it holds one received RTP packet at a time); a packet to forward is only queued in each
    /// subscriber's `Rtc` (cheap), and the subscribers are marked for polling. How many datagrams were read.
    fn take_in(&mut self) -> std::io::Result<usize> {
        let Some(mut batch) = self.rx_batch.take() else {
            return Ok(0);
        };
        let n = match batch.recv(self.fd) {
            Ok(n) => n,
            Err(e) => {
                self.rx_batch = Some(batch);
                return Err(e);
            }
        };
        let now = Instant::now();
        for k in 0..n {
            let Some((data, src)) = batch.get(k) else {
                continue;
            };
            let before = self.forwarded;
            if let Some(id) = self.on_datagram(data, src, now) {
                self.poll(id, Instant::now());
            }
            while let Some(p) = self.props.pop_front() {
                self.route(p);
            }
            if self.forwarded != before {
                if let Some(at) = batch.received_at(k) {
                    self.unsent_rx.push(at);
                }
            }
        }
        self.rx_batch = Some(batch);
        Ok(n)
    }

    /// Sends what is queued, and records the forwarding delay of the datagrams that caused it.
    fn flush(&mut self) {
        self.flush_received(self.unsent_rx.len());
    }

    /// Sends what is queued, and records the forwarding delay of the first `k` datagrams waiting for it.
    fn flush_received(&mut self, k: usize) {
        self.out.flush(self.fd);
        let k = k.min(self.unsent_rx.len());
        if k == 0 {
            return;
        }
        let now = std::time::SystemTime::now();
        for at in self.unsent_rx.drain(..k) {
            if let Ok(delay) = now.duration_since(at) {
                self.forward_delay.record(delay.as_secs_f64());
            }
        }
    }

    /// One more client taken from the queue: once the clients that were queued at a peek are all polled, the
    /// datagrams received before that peek have every copy out (the peek's own went to the clients polled after
    /// it), so their forwarding delay ends there, not at the end of the longer fan-out.
    fn settle_peeks(&mut self) {
        for p in &mut self.peeks {
            p.0 = p.0.saturating_sub(1);
        }
        while let Some(&(0, received)) = self.peeks.front() {
            self.peeks.pop_front();
            self.flush_received(received);
            for p in &mut self.peeks {
                p.1 = p.1.saturating_sub(received);
            }
        }
    }

    fn mark(&mut self, id: ClientId) {
        if let Some(c) = self.clients.get_mut(&id) {
            if !c.queued {
                c.queued = true;
                self.dirty.push_back(id);
            }
        }
    }

    /// Each room's loudest publisher (smoothed RFC 6464 audio level), announced to the room's participants as
    /// `{"type":"active_speaker","id":...}` when it changes. Silence keeps the last speaker.
    fn update_speakers(&mut self, now: Instant) {
        if now < self.next_speaker_check {
            return;
        }
        self.next_speaker_check = now + SPEAKER_INTERVAL;
        for (room, members) in &self.rooms {
            let mut best: Option<(&str, f32)> = None;
            let mut current_level = -127.0f32;
            let current = self.speakers.get(room);
            for id in members {
                let Some(c) = self.clients.get(id) else {
                    continue;
                };
                let Some(level) = c
                    .tracks_in
                    .iter()
                    .filter(|t| t.kind == MediaKind::Audio)
                    .map(|t| t.level)
                    .reduce(f32::max)
                else {
                    continue;
                };
                if current.is_some_and(|p| *p == c.participant) {
                    current_level = level;
                }
                if level > SPEAKER_MIN_LEVEL && best.is_none_or(|(_, b)| level > b) {
                    best = Some((&c.participant, level));
                }
            }
            let Some((who, level)) = best else {
                continue;
            };
            if current.is_some_and(|p| p == who)
                || (current.is_some() && level < current_level + SPEAKER_HYSTERESIS)
            {
                continue;
            }
            let text: Arc<str> = serde_json::json!({"type": "active_speaker", "id": who})
                .to_string()
                .into();
            for id in members {
                if let Some(sink) = self.clients.get(id).and_then(|c| c.sink()) {
                    sink.send_text(text.clone());
                }
            }
            debug!(%room, participant = %who, level, "active speaker");
            metrics::counter!("sfu_active_speaker_changes_total").increment(1);
            self.speaker_changes.push((room.clone(), who.to_owned()));
        }
        for (room, who) in self.speaker_changes.drain(..) {
            self.speakers.insert(room, who);
        }
        self.speakers
            .retain(|room, _| self.rooms.contains_key(room));
    }

    fn on_timers(&mut self, now: Instant) {
        self.update_speakers(now);
        let mut due = std::mem::take(&mut self.scratch);
        due.clear();
        while let Some(id) = self.deadlines.pop_due(now) {
            due.push(id);
        }
        for &id in &due {
            if let Some(c) = self.clients.get_mut(&id) {
                // Participants: once their media path was up (a slow first connection is not a dead one; their
                // signaling socket says whether they are still there). WHIP/WHEP sessions: also never up.
                let counts = c.dtls_up || !matches!(c.role, Role::Participant(_));
                if counts
                    && c.rtc.is_alive()
                    && c.down_since.is_some_and(|t| now >= t + self.media_timeout)
                {
                    info!(room = %c.room, participant = %c.participant, timeout_secs = self.media_timeout.as_secs(), "media path down: removed from the SFU");
                    metrics::counter!("sfu_media_timeouts_total").increment(1);
                    c.rtc.disconnect();
                }
                if let Err(e) = c.rtc.handle_input(Input::Timeout(now)) {
                    warn!(participant = %c.participant, "SFU peer failed: {e}");
                    c.rtc.disconnect();
                }
            }
            self.mark(id);
        }
        self.scratch = due;
    }

    fn on_tcp(&mut self, ev: TcpEvent, now: Instant) {
        match ev {
            TcpEvent::Opened(addr, out) => {
                Arc::make_mut(&mut self.tcp_conns).insert(addr, out);
            }
            TcpEvent::Packet(addr, data) => {
                if let Some(dest) = self.tcp_destination {
                    self.on_packet(&data, addr, Protocol::Tcp, dest, now);
                }
            }
            TcpEvent::Closed(addr) => {
                Arc::make_mut(&mut self.tcp_conns).remove(&addr);
            }
        }
    }

    /// Feeds a datagram to its client's `Rtc`; returns the client.
    fn on_datagram(&mut self, data: &[u8], source: SocketAddr, now: Instant) -> Option<ClientId> {
        self.on_packet(data, source, Protocol::Udp, self.destination, now)
    }

    fn on_packet(
        &mut self,
        data: &[u8],
        source: SocketAddr,
        proto: Protocol,
        destination: SocketAddr,
        now: Instant,
    ) -> Option<ClientId> {
        let Ok(contents) = DatagramRecv::try_from(data) else {
            trace!(%source, "not a WebRTC datagram");
            return None;
        };
        let stun_ufrag = crate::stun::stun_local_ufrag(data);
        let known = match stun_ufrag {
            Some(u) => self.by_ufrag.get(u).copied(),
            None => self.by_addr.get(&source).copied(),
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        // O(1) routing: STUN by our ufrag, everything else by the address its STUN came from. Datagrams
        // from unknown addresses are dropped without looking at every client.
        let Some(id) = known else {
            trace!(%source, "datagram for no client");
            return None;
        };
        let c = self.clients.get_mut(&id)?;
        if stun_ufrag.is_some() && self.by_addr.get(&source) != Some(&id) && c.rtc.accepts(&input) {
            if let Some(old) = self.by_addr.insert(source, id) {
                if let Some(o) = self.clients.get_mut(&old) {
                    o.addrs.retain(|a| *a != source);
                }
            }
            if let Some(c) = self.clients.get_mut(&id) {
                c.addrs.push(source);
            }
        }
        let c = self.clients.get_mut(&id)?;
        if let Err(e) = c.rtc.handle_input(input) {
            warn!(participant = %c.participant, "SFU peer failed: {e}");
            c.rtc.disconnect();
        }
        self.mark(id);
        Some(id)
    }

    /// Polls every marked client until `Timeout`, routing what they emit, until nothing is left.
    fn drain(&mut self) {
        loop {
            // Route everything first, so that tracks opened together are offered together.
            while let Some(p) = self.props.pop_front() {
                self.route(p);
            }
            if self.dirty.is_empty() {
                break;
            }
            if self.fan_out.is_some() && self.dirty.len() >= PARALLEL_AT {
                self.poll_parallel();
                continue;
            }
            let mut polled = 0;
            while let Some(id) = self.dirty.pop_front() {
                // Polled already since it was marked (see `run`): nothing new.
                let due = self.clients.get(&id).is_some_and(|c| c.queued);
                if due {
                    self.poll(id, Instant::now());
                    polled += 1;
                }
                self.settle_peeks();
                if due && polled % PEEK_EVERY == 0 && !self.dirty.is_empty() {
                    // What arrived meanwhile joins the subscribers still to poll (the ones polled already are
                    // marked again, at the end). The socket is non-blocking: nothing there, nothing read.
                    let (clients, received) = (self.dirty.len(), self.unsent_rx.len());
                    if self.take_in().is_ok_and(|n| n > 0) && received > 0 {
                        self.peeks.push_back((clients, received));
                    }
                }
            }
        }
        while let Some(id) = self.dead.pop() {
            if let Some(c) = self.clients.get(&id) {
                info!(room = %c.room, participant = %c.participant, "SFU peer closed");
            }
            self.remove_client(id);
        }
    }

    fn poll(&mut self, id: ClientId, now: Instant) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let mut sink = PollSink {
            fd: self.fd,
            out: &mut self.out,
            tcp: &self.tcp_conns,
            props: &mut self.props,
            dead: &mut self.dead,
        };
        poll_client(c, now, &mut sink);
        self.deadlines.set(id, c.timeout);
    }

    /// Polls every marked client, half of them on a second thread: a large fan-out's SRTP and sends are
    /// spread over two cores, so its last subscriber waits about half as long.
    fn poll_parallel(&mut self) {
        let Some(mut job) = self.fan_out.as_mut().and_then(|f| f.idle.take()) else {
            // No job to lend (cannot happen: it always comes back): poll on this thread from now on, rather
            // than leave the marked clients to a caller that would call again.
            self.fan_out = None;
            return;
        };
        let now = Instant::now();
        // Half of the marked clients (still to poll) go to the fan-out thread, moved out of the map meanwhile.
        let half = self.dirty.len() / 2;
        job.clients.clear();
        for id in self.dirty.drain(..half) {
            if self.clients.get(&id).is_some_and(|c| c.queued) {
                if let Some(c) = self.clients.remove(&id) {
                    job.clients.push(c);
                }
            }
        }
        job.now = now;
        job.fd = self.fd;
        job.tcp = Some(self.tcp_conns.clone());
        let lent = match self.fan_out.as_mut().map(|f| f.jobs.send(job)) {
            Some(Ok(())) => true,
            Some(Err(std::sync::mpsc::SendError(back))) => {
                // The thread is gone: poll its half here.
                job = back;
                for c in job.clients.drain(..) {
                    self.dirty.push_back(c.id);
                    self.clients.insert(c.id, c);
                }
                false
            }
            None => false,
        };
        while let Some(id) = self.dirty.pop_front() {
            if self.clients.get(&id).is_some_and(|c| c.queued) {
                self.poll(id, now);
            }
        }
        if !lent {
            self.fan_out = None;
            return;
        }
        let Some(fan) = self.fan_out.as_mut() else {
            return;
        };
        // Its clients are out of the map until it returns them: without them the engine cannot go on.
        let Ok(mut job) = fan.done.recv() else {
            panic!("the SFU's fan-out thread died with the clients it was polling");
        };
        job.tcp = None;
        for c in job.clients.drain(..) {
            self.deadlines.set(c.id, c.timeout);
            self.clients.insert(c.id, c);
        }
        self.props.append(&mut job.props);
        self.dead.append(&mut job.dead);
        fan.idle = Some(job);
        metrics::counter!("sfu_parallel_polls_total").increment(1);
    }

    fn room_members(&mut self, room: &str) {
        self.scratch.clear();
        if let Some(m) = self.rooms.get(room) {
            self.scratch.extend_from_slice(m);
        }
    }

    fn route(&mut self, p: Prop) {
        match p {
            Prop::Media(from, data) => self.forward(from, &data),
            Prop::TrackOpened(from, mid) => self.track_opened(from, mid),
            Prop::TrackClosed(from, mid) => {
                let Some(room) = self.clients.get(&from).map(|c| c.room.clone()) else {
                    return;
                };
                self.track_closed(&room, from, mid);
            }
            Prop::Keyframe(publisher, mid, rid, kind) => {
                if let Some(c) = self.clients.get_mut(&publisher) {
                    c.request_keyframe(mid, rid, kind, Instant::now());
                    self.mark(publisher);
                }
            }
            Prop::WhepSlot(viewer) => self.feed_whep(viewer),
            Prop::Estimate(id) => self.allocate(id),
            Prop::Data(from, chan, binary, msg) => self.fan_out_data(from, chan, binary, &msg),
        }
    }

    /// The hot path: one RTP packet from `from` to every subscriber of that track.
    fn forward(&mut self, from: ClientId, pkt: &Fwd) {
        let Some(pc) = self.clients.get(&from) else {
            return;
        };
        let room = &pc.room;
        // Simulcast: the layer for each wanted quality.
        let mut picks = [None; simulcast::RANKS];
        if pkt.pos.rid.is_some() {
            if let Some(t) = pc.tracks_in.iter().find(|t| t.mid == pkt.mid) {
                for (want, p) in picks.iter_mut().enumerate() {
                    *p = t.layers.pick(want, pkt.pos.arrival);
                }
            }
        }
        let mut keyframe_for = [false; simulcast::RANKS];
        self.vp9_copies.clear();
        self.scratch.clear();
        if let Some(m) = self.rooms.get(room.as_str()) {
            self.scratch.extend_from_slice(m);
        }
        // Large rooms: silence is not worth sending to everyone (receivers conceal the gap, as with DTX).
        if self.drop_silent_audio_above > 0
            && self.scratch.len() > self.drop_silent_audio_above
            && pkt.audio_level.is_some_and(|l| l <= SILENT_LEVEL)
        {
            metrics::counter!("sfu_silent_audio_dropped_total").increment(1);
            return;
        }
        for i in 0..self.scratch.len() {
            let sid = self.scratch[i];
            if sid == from {
                continue;
            }
            let Some(s) = self.clients.get_mut(&sid) else {
                continue;
            };
            if !s.connected {
                continue;
            }
            let mut wrote = false;
            let cap = s.rtx_ratio_cap();
            for t in &mut s.tracks_out {
                if t.src != Some((from, pkt.mid)) || t.paused {
                    continue;
                }
                let Some(mid) = t.open_mid() else {
                    continue;
                };
                let target = picks[t.layers.target().min(simulcast::RANKS - 1)];
                let (seq, time) = match t.layers.admit(&pkt.pos, target) {
                    Admit::Forward { seq, time } => (seq, time),
                    Admit::Skip(wait) => {
                        if wait {
                            if let Some(r) = target {
                                keyframe_for[simulcast::rank(&r)] = true;
                            }
                        }
                        continue;
                    }
                };
                let pt = match t.pt_map {
                    Some((from_pt, to_pt)) if from_pt == pkt.params.pt() => to_pt,
                    _ => {
                        let Some(to_pt) = s
                            .rtc
                            .codec_config()
                            .match_params(pkt.params)
                            .map(|p| p.pt())
                        else {
                            trace!(participant = %s.participant, "no matching codec for a forwarded packet");
                            continue;
                        };
                        t.pt_map = Some((pkt.params.pt(), to_pt));
                        to_pt
                    }
                };
                let mut api = s.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                    continue;
                };
                // A new buffer: at the stream's first packet (ours is smaller than str0m's default), and when
                // decoding restarts at a keyframe (what is left to retransmit of the run before is not needed, and
                // on a link too slow for the old layer its resends would delay the keyframe).
                let rebased = t.layers.take_rebased();
                if rebased {
                    debug!(participant = %s.participant, %mid, rid = ?t.layers.current, "forwarding restarts at a keyframe");
                }
                if (rebased || t.rtx_sized != Some(mid)) && t.kind == MediaKind::Video {
                    // The resend share starts again too: the old layer's resends must not stop the keyframe's.
                    new_rtx_buffer(tx, cap, true);
                    // With str0m's estimator on (`twcc`), its pacer would hold video at 1.1 x the estimate:
                    // forwarded video leaves as it arrives (the publisher paced it), as audio does.
                    tx.set_unpaced(true);
                    t.rtx_sized = Some(mid);
                }
                let payload = match &pkt.vp9 {
                    Some(d) => {
                        let (pic, tl0) = t.layers.picture_ids(seq, d.pic, d.tl0);
                        self.vp9_copies.payload(d, &pkt.payload, pic, tl0)
                    }
                    None => pkt.payload.clone(),
                };
                let mut write = RtpWrite::new(pt, seq.into(), time, pkt.pos.arrival, payload);
                if let Some(d) = &pkt.vp8 {
                    let (pic, tl0) = t.layers.picture_ids(seq, d.picture_id(), d.tl0_pic_idx());
                    if pic != d.picture_id() || tl0 != d.tl0_pic_idx() {
                        match vp8_patch(d, pic, tl0) {
                            Ok(patch) => write = write.vp8_patch(patch),
                            Err(e) => trace!("VP8 descriptor not rewritten: {e}"),
                        }
                    }
                }
                let ext = ExtensionValues {
                    audio_level: pkt.audio_level,
                    voice_activity: pkt.voice_activity,
                    video_orientation: pkt.video_orientation,
                    ..Default::default()
                };
                tx.write_rtp(
                    write
                        .marker(pkt.marker)
                        .ext_vals(ext)
                        .nackable(t.kind == MediaKind::Video),
                );
                wrote = true;
                self.forwarded += 1;
            }
            if wrote {
                s.wrote = true;
                if !s.queued {
                    s.queued = true;
                    self.dirty.push_back(sid);
                }
            }
        }
        // Subscribers waiting to switch layers need a keyframe of their new layer (throttled per layer).
        if keyframe_for.contains(&true) {
            if let Some(pc) = self.clients.get_mut(&from) {
                let now = Instant::now();
                for (rank, &want) in keyframe_for.iter().enumerate() {
                    if want {
                        if let Some(r) = picks.iter().flatten().find(|r| simulcast::rank(r) == rank)
                        {
                            pc.request_keyframe(pkt.mid, Some(*r), KeyframeRequestKind::Pli, now);
                        }
                    }
                }
                if !pc.queued {
                    pc.queued = true;
                    self.dirty.push_back(from);
                }
            }
        }
    }

    /// A data-channel message from `from`: to every other participant of the room, to one, or to the SFU.
    fn fan_out_data(&mut self, from: ClientId, chan: usize, binary: bool, msg: &[u8]) {
        let Some(c) = self.clients.get(&from) else {
            return;
        };
        let Some((to, payload)) = data::split_header(msg) else {
            debug!(participant = %c.participant, "data-channel message without a routing header: dropped");
            return;
        };
        if to == data::SFU_ADDR {
            self.on_control(from, payload);
            return;
        }
        self.data_buf.clear();
        self.data_buf.extend_from_slice(c.participant.as_bytes());
        self.data_buf.push(b'\n');
        self.data_buf.extend_from_slice(payload);
        let room = c.room.clone();
        self.room_members(&room);
        let members = std::mem::take(&mut self.scratch);
        let mut shared = None;
        for &sid in &members {
            if sid == from {
                continue;
            }
            let Some(s) = self.clients.get_mut(&sid) else {
                continue;
            };
            if !matches!(s.role, Role::Participant(_))
                || !(to.is_empty() || s.participant.as_bytes() == to)
            {
                continue;
            }
            match s
                .data
                .send(&mut s.rtc, chan, binary, &self.data_buf, &mut shared)
            {
                Sent::Written => {
                    metrics::counter!("sfu_data_messages_out_total").increment(1);
                }
                Sent::Queued => {
                    metrics::counter!("sfu_data_messages_out_total").increment(1);
                    metrics::counter!("sfu_data_messages_queued_total").increment(1);
                }
                Sent::Dropped => {
                    metrics::counter!("sfu_data_messages_dropped_total").increment(1);
                    if chan != data::LOSSY {
                        debug!(participant = %s.participant, "data queue full: reliable message dropped");
                    }
                }
            }
            if !s.queued {
                s.queued = true;
                self.dirty.push_back(sid);
            }
        }
        self.scratch = members;
    }

    /// A control message a participant sent to the SFU on a data channel (`"sfu\n{json}"`).
    fn on_control(&mut self, from: ClientId, payload: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        match v.get("type").and_then(|t| t.as_str()) {
            Some(kind @ ("subscribe_quality" | "subscribe")) => {
                let pref = if kind == "subscribe_quality" {
                    let Some(want) = v
                        .get("quality")
                        .and_then(|q| q.as_str())
                        .and_then(simulcast::quality)
                    else {
                        return;
                    };
                    Pref {
                        want: Some(want),
                        ..Pref::default()
                    }
                } else {
                    Pref {
                        want: None,
                        video: v.get("video").and_then(|x| x.as_bool()),
                        audio: v.get("audio").and_then(|x| x.as_bool()),
                    }
                };
                let only = v.get("participant").and_then(|p| p.as_str()).unwrap_or("");
                let Some(c) = self.clients.get_mut(&from) else {
                    return;
                };
                debug!(participant = %c.participant, publisher = only, ?pref, "subscription");
                if only.is_empty() {
                    // A wish for everyone replaces the per-publisher ones on the same fields.
                    for p in c.prefs.values_mut() {
                        p.want = p.want.filter(|_| pref.want.is_none());
                        p.video = p.video.filter(|_| pref.video.is_none());
                        p.audio = p.audio.filter(|_| pref.audio.is_none());
                    }
                }
                if c.prefs.len() < MAX_PREFS || c.prefs.contains_key(only) {
                    c.prefs.entry(only.to_owned()).or_default().merge(pref);
                }
                self.apply_prefs(from);
                self.allocate(from);
            }
            _ => {
                if let Some(c) = self.clients.get(&from) {
                    debug!(participant = %c.participant, msg = %v, "unknown SFU control message");
                }
            }
        }
    }

    /// Applies a subscriber's wishes to its forwarded tracks: wanted quality, paused or not. A resumed video
    /// waits for a keyframe (requested from the publisher).
    fn apply_prefs(&mut self, sid: ClientId) {
        let Some(c) = self.clients.get(&sid) else {
            return;
        };
        if c.prefs.is_empty() {
            return;
        }
        // The publisher's name lives in its own client: look the wishes up first, then apply them.
        let wishes: Vec<(usize, Pref)> = c
            .tracks_out
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let (p, _) = t.src?;
                Some((i, c.pref_for(&self.clients.get(&p)?.participant)))
            })
            .collect();
        let mut keyframes = Vec::new();
        if let Some(c) = self.clients.get_mut(&sid) {
            for (i, pref) in wishes {
                let Some(t) = c.tracks_out.get_mut(i) else {
                    continue;
                };
                let paused = !match t.kind {
                    MediaKind::Video => pref.video,
                    MediaKind::Audio => pref.audio,
                }
                .unwrap_or(true);
                if t.kind == MediaKind::Video {
                    t.layers.want = pref.want.unwrap_or(simulcast::DEFAULT_WANT);
                }
                if t.paused && !paused {
                    // Resumed: the decoder starts again at a keyframe.
                    t.layers.new_source();
                    if let (Some((p, m)), MediaKind::Video) = (t.src, t.kind) {
                        keyframes.push((p, m));
                    }
                }
                t.paused = paused;
            }
        }
        for (p, m) in keyframes {
            self.props
                .push_back(Prop::Keyframe(p, m, None, KeyframeRequestKind::Pli));
        }
    }

    fn track_opened(&mut self, from: ClientId, mid: Mid) {
        let Some(pubc) = self.clients.get(&from) else {
            return;
        };
        let Some(kind) = pubc.tracks_in.iter().find(|t| t.mid == mid).map(|t| t.kind) else {
            return;
        };
        let stream = pubc
            .rtc
            .media(mid)
            .map(|m| m.stream_id().to_owned())
            .unwrap_or_default();
        let stream_id = if valid_msid(&stream) {
            stream
        } else {
            pubc.participant.clone()
        };
        let publisher = pubc.participant.clone();
        let room = pubc.room.clone();
        self.room_members(&room);
        let members = std::mem::take(&mut self.scratch);
        for &sid in &members {
            if sid == from {
                continue;
            }
            let Some(s) = self.clients.get_mut(&sid) else {
                continue;
            };
            match s.role {
                Role::Participant(_) if s.can_subscribe => {
                    s.out_seq += 1;
                    s.tracks_out.push(TrackOut {
                        src: Some((from, mid)),
                        kind,
                        stream_id: stream_id.clone(),
                        track_id: format!("{publisher}.{}", s.out_seq),
                        state: OutState::ToOpen,
                        layers: LayerState::default(),
                        paused: false,
                        pt_map: None,
                        rtx_sized: None,
                    });
                    self.mark(sid);
                }
                Role::Whep => self.feed_whep(sid),
                _ => {}
            }
        }
        // The subscribers' earlier wishes about this publisher hold for its new track too.
        for &sid in &members {
            self.apply_prefs(sid);
        }
        self.scratch = members;
    }

    fn track_closed(&mut self, room: &str, from: ClientId, mid: Mid) {
        self.room_members(room);
        let members = std::mem::take(&mut self.scratch);
        for &sid in &members {
            let Some(s) = self.clients.get_mut(&sid) else {
                continue;
            };
            let whep = matches!(s.role, Role::Whep);
            s.tracks_out.retain_mut(|t| {
                if t.src != Some((from, mid)) {
                    return true;
                }
                if whep {
                    t.src = None;
                    return true;
                }
                match t.state {
                    OutState::ToOpen => false,
                    OutState::Open(m) => {
                        t.state = OutState::ToStop(m);
                        true
                    }
                    _ => {
                        // Negotiating: stopped once the answer is in.
                        t.src = None;
                        true
                    }
                }
            });
            if whep {
                self.feed_whep(sid);
            }
            self.mark(sid);
        }
        self.scratch = members;
    }

    /// Caps the simulcast layers a client receives by its downlink estimate: the video share of the estimate
    /// is split evenly between its video tracks, each gets the best layer that fits (see [`simulcast::fit`]).
    fn allocate(&mut self, sid: ClientId) {
        let now = Instant::now();
        self.set_twcc_goal(sid, now);
        let Some(s) = self.clients.get(&sid) else {
            return;
        };
        let Some(estimate) = s.bwe else {
            return;
        };
        let video = |t: &&TrackOut| t.kind == MediaKind::Video && t.open_mid().is_some();
        let n = s.tracks_out.iter().filter(video).count() as u64;
        if n == 0 {
            return;
        }
        // GoogCC's estimate is what the link carries, audio included (it grows by probing, not by trying a
        // layer): video gets what audio leaves. The loss-based one keeps a margin for audio and RTCP.
        let twcc = s.estimation == BandwidthEstimation::Twcc;
        let budget = if twcc {
            let audio = s
                .tracks_out
                .iter()
                .filter(|t| t.kind == MediaKind::Audio && t.open_mid().is_some())
                .count() as u64;
            estimate.saturating_sub(audio * TWCC_AUDIO_BPS) / n
        } else {
            estimate * VIDEO_SHARE_PERCENT / 100 / n
        };
        let keep = if twcc { TWCC_KEEP_PERCENT } else { 100 };
        trace!(participant = %s.participant, estimate, budget, tracks = n, "allocating");
        self.caps.clear();
        for (i, t) in s.tracks_out.iter().enumerate() {
            if !video(&t) {
                continue;
            }
            let Some(layers) = self.source_layers(t) else {
                continue;
            };
            if !layers.is_simulcast() {
                continue;
            }
            let cap = simulcast::fit(layers, t.layers.want, budget, t.layers.cap, keep, now);
            if cap != t.layers.cap {
                self.caps.push((i, cap));
            }
        }
        let Some(s) = self.clients.get_mut(&sid) else {
            return;
        };
        for &(i, cap) in &self.caps {
            if let Some(t) = s.tracks_out.get_mut(i) {
                debug!(participant = %s.participant, estimate, from = t.layers.cap, to = cap, "bandwidth caps a simulcast track");
                metrics::counter!("sfu_bandwidth_layer_changes_total").increment(1);
                t.layers.cap_to(cap, now, s.congestion.queue_delay());
            }
        }
        self.mark(sid);
    }

    /// The layers of the published track that `t` forwards (its publisher's, as measured at the SFU).
    fn source_layers(&self, t: &TrackOut) -> Option<&Layers> {
        let (p, m) = t.src?;
        let pc = self.clients.get(&p)?;
        pc.tracks_in
            .iter()
            .find(|ti| ti.mid == m)
            .map(|ti| &ti.layers)
    }

    /// `twcc` estimation: tells a subscriber's estimator what to find room for. Desired: every track at its
    /// wanted quality (a simulcast track's best measured layer up to what the subscriber asks for, with the
    /// headroom an upgrade needs; audio at [`TWCC_AUDIO_BPS`]); minimum: what the simulcast tracks' next layers up
    /// need, which padding sustains while the estimate grows towards it (str0m's `Bwe::set_bitrate`). Single-layer
    /// video adds nothing: it is forwarded whatever the estimate.
    fn set_twcc_goal(&mut self, sid: ClientId, now: Instant) {
        let Some(s) = self.clients.get(&sid) else {
            return;
        };
        if s.estimation != BandwidthEstimation::Twcc {
            return;
        }
        let (mut minimum, mut desired) = (0u64, 0u64);
        for t in &s.tracks_out {
            if t.open_mid().is_none() {
                continue;
            }
            if t.kind == MediaKind::Audio {
                desired += TWCC_AUDIO_BPS;
                continue;
            }
            let (next, want) = match self.source_layers(t) {
                Some(l) if l.is_simulcast() => simulcast::goal(l, t.layers.want, t.layers.cap, now),
                // One layer: it is forwarded whatever the estimate, nothing to probe for.
                _ => (0, 0),
            };
            minimum += next;
            desired += want;
        }
        let goal = (minimum, desired);
        let Some(s) = self.clients.get_mut(&sid) else {
            return;
        };
        if goal != s.bwe_goal {
            trace!(participant = %s.participant, minimum = goal.0, desired = goal.1, "estimator goal");
            s.bwe_goal = goal;
            s.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(goal.0), Bitrate::bps(goal.1));
        }
    }

    /// Binds a WHEP viewer's unfed m-lines to published tracks of the room (the newest publisher first).
    fn feed_whep(&mut self, viewer: ClientId) {
        let Some(room) = self.clients.get(&viewer).map(|v| v.room.clone()) else {
            return;
        };
        self.room_members(&room);
        let Some(v) = self.clients.get(&viewer) else {
            return;
        };
        let mut picks: Vec<(usize, ClientId, Mid)> = Vec::new();
        let mut used: Vec<(ClientId, Mid)> = v.tracks_out.iter().filter_map(|t| t.src).collect();
        for (i, t) in v.tracks_out.iter().enumerate() {
            if t.src.is_some() {
                continue;
            }
            let found = self
                .scratch
                .iter()
                .rev()
                .filter(|&&p| p != viewer)
                .find_map(|p| {
                    let pc = self.clients.get(p)?;
                    let ti = pc
                        .tracks_in
                        .iter()
                        .find(|ti| ti.kind == t.kind && !used.contains(&(*p, ti.mid)))?;
                    Some((*p, ti.mid))
                });
            if let Some((p, m)) = found {
                used.push((p, m));
                picks.push((i, p, m));
            }
        }
        for (i, p, m) in picks {
            if let Some(v) = self.clients.get_mut(&viewer) {
                if let Some(t) = v.tracks_out.get_mut(i) {
                    t.src = Some((p, m));
                    t.layers.new_source();
                }
            }
            self.props
                .push_back(Prop::Keyframe(p, m, None, KeyframeRequestKind::Pli));
        }
    }

    fn new_client(
        &mut self,
        room: &str,
        participant: &str,
        role: Role,
        perms: Permissions,
    ) -> ClientId {
        let Permissions {
            can_publish,
            can_subscribe,
            can_publish_data,
        } = perms;
        let now = Instant::now();
        let ufrag = signal::random_hex(8);
        let estimation = if can_subscribe || matches!(role, Role::Whep) {
            self.bandwidth_estimation
        } else {
            BandwidthEstimation::Off
        };
        let mut config = Rtc::builder();
        if let Some(cert) = &self.dtls_cert {
            config = config.set_dtls_cert(cert.clone());
        }
        if estimation == BandwidthEstimation::Twcc {
            config = config.enable_bwe(Some(Bitrate::bps(TWCC_INITIAL_BPS)));
        }
        let mut rtc = config
            .set_sctp_max_buffered_amount(data::SCTP_BUFFER)
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_local_ice_credentials(IceCreds {
                ufrag: ufrag.clone(),
                pass: signal::random_hex(16),
            })
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        for c in &self.candidates {
            rtc.add_local_candidate(c.clone());
        }
        let data = if matches!(role, Role::Participant(_)) {
            DataOut::new(data::create_channels(&mut rtc))
        } else {
            DataOut::default()
        };
        let id = self.next_id;
        self.next_id += 1;
        self.by_ufrag.insert(ufrag.clone(), id);
        self.by_participant
            .insert((room.to_owned(), participant.to_owned()), id);
        let members = self.rooms.entry(room.to_owned()).or_default();
        members.push(id);
        let mut client = Client {
            id,
            room: room.to_owned(),
            participant: participant.to_owned(),
            role,
            rtc,
            can_publish,
            can_subscribe,
            can_publish_data,
            data,
            ufrag,
            addrs: Vec::new(),
            pending: None,
            pending_sdp: String::new(),
            pending_resends: 0,
            last_offer: None,
            remote_sdp: String::new(),
            negotiated: false,
            connected: false,
            dtls_up: false,
            down_since: Some(now),
            joined_at: now,
            next_offer_at: now,
            tracks_in: Vec::new(),
            tracks_out: Vec::new(),
            out_seq: 0,
            timeout: now,
            stats_in: HashMap::new(),
            stats_out: HashMap::new(),
            bytes_out: 0,
            egress_loss: None,
            report_due: false,
            egress_rtt: None,
            congestion: Congestion::default(),
            queued: false,
            wrote: false,
            estimation,
            loss_bwe: LossEstimator::default(),
            twcc_bwe: None,
            remb: None,
            bwe: None,
            bwe_goal: (0, 0),
            prefs: HashMap::new(),
            remote_ufrag: None,
        };
        // Subscribe to what the room already publishes.
        if matches!(client.role, Role::Participant(_)) && can_subscribe {
            for &pid in members.iter() {
                let Some(p) = self.clients.get(&pid) else {
                    continue;
                };
                for t in &p.tracks_in {
                    let stream = p
                        .rtc
                        .media(t.mid)
                        .map(|m| m.stream_id().to_owned())
                        .unwrap_or_default();
                    client.out_seq += 1;
                    client.tracks_out.push(TrackOut {
                        src: Some((pid, t.mid)),
                        kind: t.kind,
                        stream_id: if valid_msid(&stream) {
                            stream
                        } else {
                            p.participant.clone()
                        },
                        track_id: format!("{}.{}", p.participant, client.out_seq),
                        state: OutState::ToOpen,
                        layers: LayerState::default(),
                        paused: false,
                        pt_map: None,
                        rtx_sized: None,
                    });
                }
            }
        }
        self.deadlines.set(id, client.timeout);
        self.clients.insert(id, Box::new(client));
        metrics::gauge!("sfu_participants").set(self.clients.len() as f64);
        self.mark(id);
        id
    }

    fn remove_client(&mut self, id: ClientId) {
        let Some(mut c) = self.clients.remove(&id) else {
            return;
        };
        self.deadlines.remove(id);
        c.rtc.disconnect();
        metrics::gauge!("sfu_participants").set(self.clients.len() as f64);
        for a in &c.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
            }
        }
        if self.by_ufrag.get(&c.ufrag) == Some(&id) {
            self.by_ufrag.remove(&c.ufrag);
        }
        let key = (c.room.clone(), c.participant.clone());
        if self.by_participant.get(&key) == Some(&id) {
            self.by_participant.remove(&key);
        }
        if let Some(m) = self.rooms.get_mut(&c.room) {
            m.retain(|x| *x != id);
            if m.is_empty() {
                self.rooms.remove(&c.room);
            }
        }
        for t in &c.tracks_in {
            self.track_closed(&c.room, id, t.mid);
        }
        debug!(room = %c.room, participant = %c.participant, "SFU client removed");
    }

    fn on_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Join {
                room,
                participant,
                perms,
                sink,
            } => {
                info!(%room, %participant, "SFU participant joined");
                let key = (room.clone(), participant.clone());
                if let Some(old) = self.by_participant.get(&key).copied() {
                    self.remove_client(old);
                }
                if let Some(who) = self.speakers.get(&room) {
                    // The newcomer learns who speaks now.
                    let text: Arc<str> = serde_json::json!({"type": "active_speaker", "id": who})
                        .to_string()
                        .into();
                    sink.send_text(text);
                }
                self.members.insert(key, (perms, sink.clone()));
                self.new_client(&room, &participant, Role::Participant(sink), perms);
            }
            Command::Leave { room, participant } => {
                info!(%room, %participant, "SFU participant left");
                let key = (room, participant);
                self.members.remove(&key);
                if let Some(id) = self.by_participant.get(&key).copied() {
                    self.remove_client(id);
                }
            }
            Command::Signal {
                room,
                participant,
                msg,
            } => self.on_signal(room, participant, msg, now),
            Command::HttpOffer {
                kind,
                room,
                offer,
                reply,
            } => {
                let r = self.http_offer(kind, &room, &offer);
                let _ = reply.send(r);
            }
            Command::HttpDelete {
                kind,
                room,
                id,
                reply,
            } => {
                let pid = format!("{}_{id}", kind.prefix());
                let found = self.by_participant.get(&(room, pid)).copied();
                if let Some(cid) = found {
                    self.remove_client(cid);
                }
                let _ = reply.send(found.is_some());
            }
            Command::HttpPatch {
                kind,
                room,
                id,
                frag,
                reply,
            } => {
                let r = self.http_patch(kind, room, &id, &frag);
                let _ = reply.send(r);
            }
        }
        self.drain();
    }

    fn on_signal(&mut self, room: String, participant: String, msg: MediaSignal, now: Instant) {
        // Polled afterwards whatever the signal did: an answer refused puts the offer's tracks back to offer.
        if let Some(id) = self.signal_to_client(room, participant, msg, now) {
            self.mark(id);
        }
    }

    /// A participant's signal to its client; the client it went to.
    fn signal_to_client(
        &mut self,
        room: String,
        participant: String,
        msg: MediaSignal,
        now: Instant,
    ) -> Option<ClientId> {
        let key = (room, participant);
        let id = match self.by_participant.get(&key).copied() {
            Some(id) => id,
            None => {
                // Its Rtc closed (failed DTLS, timeout): a new offer starts a new one.
                let Some((perms, sink)) = self.members.get(&key).cloned() else {
                    debug!(room = %key.0, participant = %key.1, "SFU signal from a participant not in an sfu room");
                    return None;
                };
                if !matches!(msg, MediaSignal::Offer(_)) {
                    return None;
                }
                self.new_client(&key.0, &key.1, Role::Participant(sink), perms)
            }
        };
        let c = self.clients.get_mut(&id)?;
        match msg {
            MediaSignal::Offer(sdp) => {
                if let Some((_, answer)) =
                    c.last_offer.as_ref().filter(|(o, _)| same_offer(o, &sdp))
                {
                    debug!(participant = %c.participant, "repeated offer: answered again");
                    if let Some(s) = c.sink() {
                        s.send(MediaSignal::Answer(answer.clone()));
                    }
                    return Some(id);
                }
                let offer = match SdpOffer::from_sdp_string(&sdp) {
                    Ok(o) => o,
                    Err(e) => {
                        c.refuse_sdp("bad SDP offer", &e);
                        return Some(id);
                    }
                };
                debug!(participant = %c.participant, glare = c.pending.is_some(), "offer from the participant");
                if c.pending.is_some() {
                    // Glare: the SFU is the polite side (its id "sfu" sorts after "p_…"): roll back.
                    c.rollback();
                }
                match c.rtc.sdp_api().accept_offer(offer) {
                    Ok(answer) => {
                        c.negotiated = true;
                        c.refresh_ufrag(&mut self.by_ufrag);
                        let answer = crate::sdp::follow_codec_order(&sdp, &answer.to_sdp_string());
                        c.remote_sdp.clone_from(&sdp);
                        // Its tracks go to the room now, not once its media connection is up: the others'
                        // next offers carry them (a round of renegotiation less when a room moves to the SFU).
                        for (mid, kind) in crate::sdp::receiving_media(&answer) {
                            c.publish(Mid::from(mid.as_str()), kind, &mut self.props);
                        }
                        let sent = c
                            .sink()
                            .is_some_and(|s| s.send(MediaSignal::Answer(answer.clone())));
                        c.last_offer = Some((sdp, answer));
                        debug!(participant = %c.participant, sent, "SFU answer");
                    }
                    Err(e) => c.refuse_sdp("cannot accept the offer", &e),
                }
            }
            MediaSignal::Answer(sdp) => {
                let Some((pending, _)) = c.pending.take() else {
                    debug!(participant = %c.participant, "answer without an SFU offer: ignored");
                    return Some(id);
                };
                let answer = match SdpAnswer::from_sdp_string(&sdp) {
                    Ok(a) => a,
                    Err(e) => {
                        c.refuse_sdp("bad SDP answer", &e);
                        c.pending = Some((pending, now));
                        c.rollback();
                        return Some(id);
                    }
                };
                match c.rtc.sdp_api().accept_answer(pending, answer) {
                    Ok(()) => {
                        c.remote_sdp = sdp;
                        debug!(participant = %c.participant, "SFU offer answered");
                        c.negotiated = true;
                        let mut opened = Vec::new();
                        c.tracks_out.retain_mut(|t| match t.state {
                            OutState::Negotiating(m) => {
                                if let Some(src) = t.src {
                                    t.state = OutState::Open(m);
                                    opened.push(src);
                                } else {
                                    t.state = OutState::ToStop(m);
                                }
                                true
                            }
                            OutState::NegotiatingStop(_) => false,
                            _ => true,
                        });
                        c.refresh_ufrag(&mut self.by_ufrag);
                        if c.connected {
                            for (p, m) in opened {
                                self.props.push_back(Prop::Keyframe(
                                    p,
                                    m,
                                    None,
                                    KeyframeRequestKind::Pli,
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        c.refuse_sdp("cannot accept the answer", &e);
                        c.rollback();
                    }
                }
            }
            MediaSignal::Candidate(v) => {
                let Some(s) = v.get("candidate").and_then(|s| s.as_str()) else {
                    return Some(id); // end-of-candidates
                };
                let s = s.trim();
                if s.is_empty() {
                    return Some(id);
                }
                match Candidate::from_sdp_string(s) {
                    Ok(cand) => c.rtc.add_remote_candidate(cand),
                    Err(e) => debug!(participant = %c.participant, "ignoring candidate {s:?}: {e}"),
                }
            }
        }
        Some(id)
    }

    /// Trickled candidates for a WHIP/WHEP session. Bad candidate lines are skipped (logged).
    fn http_patch(
        &mut self,
        kind: HttpKind,
        room: String,
        id: &str,
        frag: &crate::whip::SdpFrag,
    ) -> PatchResult {
        let pid = format!("{}_{id}", kind.prefix());
        let Some(cid) = self.by_participant.get(&(room, pid)).copied() else {
            return PatchResult::NotFound;
        };
        let Some(c) = self.clients.get_mut(&cid) else {
            return PatchResult::NotFound;
        };
        if frag.ufrag.is_some() && frag.ufrag != c.remote_ufrag {
            return PatchResult::IceRestart;
        }
        for line in &frag.candidates {
            match Candidate::from_sdp_string(line) {
                Ok(cand) => c.rtc.add_remote_candidate(cand),
                Err(e) => {
                    debug!(participant = %c.participant, "ignoring trickled candidate {line:?}: {e}")
                }
            }
        }
        self.mark(cid);
        PatchResult::Applied
    }

    fn http_offer(
        &mut self,
        kind: HttpKind,
        room: &str,
        offer: &str,
    ) -> Result<HttpSession, String> {
        let offer_text = offer;
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| format!("bad SDP offer: {e}"))?;
        let rid = signal::random_hex(8);
        let pid = format!("{}_{rid}", kind.prefix());
        let (role, publish) = match kind {
            HttpKind::Whip => (Role::Whip, true),
            HttpKind::Whep => (Role::Whep, false),
        };
        let perms = Permissions {
            can_publish: publish,
            can_subscribe: !publish,
            can_publish_data: false,
        };
        let id = self.new_client(room, &pid, role, perms);
        let Some(c) = self.clients.get_mut(&id) else {
            return Err("client vanished".into());
        };
        c.remote_ufrag = crate::whip::SdpFrag::parse(offer_text).ufrag;
        match c.rtc.sdp_api().accept_offer(offer) {
            Ok(answer) => {
                c.negotiated = true;
                c.refresh_ufrag(&mut self.by_ufrag);
                info!(%room, participant = %pid, "{} session started", kind.prefix());
                Ok(HttpSession {
                    id: rid,
                    answer: crate::sdp::follow_codec_order(offer_text, &answer.to_sdp_string()),
                })
            }
            Err(e) => {
                self.remove_client(id);
                Err(format!("cannot accept offer: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_sent_again_with_its_gathered_candidates_is_the_same_offer() {
        let first = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:abcd\r\n";
        let again = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host\r\na=end-of-candidates\r\n";
        assert!(same_offer(first, again));
        let other = again.replace("ice-ufrag:abcd", "ice-ufrag:efgh");
        assert!(
            !same_offer(first, &other),
            "new ICE credentials: a new offer"
        );
        let more = first.replace("a=mid:0\r\n", "a=mid:0\r\na=sendrecv\r\n");
        assert!(!same_offer(first, &more));
        // Chromium's localDescription after gathering: the default candidate in m=, c= and a=rtcp:.
        let gathered = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\nm=audio 51234 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 192.0.2.1\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=candidate:1 1 udp 2122260223 192.0.2.1 51234 typ host\r\n";
        assert!(same_offer(first, gathered));
        let codec = gathered.replace("SAVPF 111", "SAVPF 111 63");
        assert!(
            !same_offer(first, &codec),
            "another format list: a new offer"
        );
        let kind = gathered.replace("m=audio", "m=video");
        assert!(!same_offer(first, &kind));
    }

    #[test]
    fn msid_validation() {
        assert!(valid_msid("1b2c3d4e-aaaa-bbbb-cccc-0123456789ab"));
        assert!(valid_msid("{abc}"));
        assert!(!valid_msid(""));
        assert!(!valid_msid("-"));
        assert!(!valid_msid("a b"));
        assert!(!valid_msid(&"x".repeat(65)));
    }
}
