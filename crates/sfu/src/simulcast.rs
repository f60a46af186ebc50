//! Simulcast: which layer of a published video each subscriber gets, and switching between layers.
//!
//! A publisher sends up to three encodings of a video on one m-line, told apart by their RTP stream id (`rid`):
//! `q` (quarter resolution), `h` (half), `f` (full); other rid names are ranked the same way (`l`/`low`/`0`,
//! `m`/`mid`/`1`, anything else high). Each subscriber of the track has a wanted quality (low/medium/high, by
//! default high) and gets the best layer the publisher currently sends at or below it (else the lowest above).
//! A switch happens only at the first packet of a keyframe of the new layer (one is requested from the
//! publisher), and sequence numbers and timestamps are rewritten ([`LayerState`]) so the subscriber's decoder
//! sees one continuous stream: sequence numbers continue without a gap, timestamps by the wall-clock time in
//! between.
//!
//! Bandwidth: the SFU measures each layer's bitrate ([`Layers::bitrate`]) and caps what a subscriber gets by
//! an estimate of its downlink ([`LossEstimator`], from the loss in its receiver reports, bounded by REMB when the browser
//! sends it; see [`fit`]): the forwarded rank is the lower of the wanted quality and that cap
//! ([`LayerState::target`]). When the cap goes down, the layer that no longer fits stops at once and nothing is
//! forwarded while the link's queue drains ([`LayerState::cap_to`], the delay from [`Congestion`]), so that the
//! lower layer's keyframe is not lost behind it.

use std::time::{Duration, Instant};

use str0m::media::Rid;

/// A layer not seen for this long is considered stopped (the publisher dropped it, e.g. for bandwidth).
const LAYER_TIMEOUT: Duration = Duration::from_millis(1500);

/// VP8 picture ids are 15 bits.
const PICTURE_ID_MASK: u16 = 0x7fff;

/// Number of quality ranks.
pub(crate) const RANKS: usize = 3;
/// The default wanted quality (high).
pub(crate) const DEFAULT_WANT: usize = RANKS - 1;

/// Rank of a rid: 0 low, 1 medium, 2 high.
pub(crate) fn rank(rid: &str) -> usize {
    match rid {
        "q" | "l" | "low" | "0" => 0,
        "h" | "m" | "mid" | "medium" | "1" => 1,
        _ => 2,
    }
}

/// A quality name of the `subscribe_quality` control message.
pub(crate) fn quality(name: &str) -> Option<usize> {
    match name {
        "low" => Some(0),
        "medium" => Some(1),
        "high" => Some(2),
        _ => None,
    }
}

/// Bitrates are measured over windows of this length.
const RATE_WINDOW: Duration = Duration::from_millis(1000);
/// Moving to a higher layer needs this much more budget than the layer's bitrate (percent): no flapping at
/// the edge.
const UPGRADE_HEADROOM: u64 = 115;

/// The layers a publisher currently sends on one track, and their bitrates.
#[derive(Default)]
pub(crate) struct Layers {
    seen: [Option<(Rid, Instant)>; RANKS],
    /// Bytes per rank in the current window, which started at `window`.
    bytes: [u64; RANKS],
    window: Option<Instant>,
    /// Smoothed bitrate per rank (bit/s), 0 before the first window ends.
    bps: [u64; RANKS],
}

impl Layers {
    /// A packet of layer `rid` (`bytes` of payload) arrived at `at`.
    pub fn seen(&mut self, rid: Rid, at: Instant, bytes: usize) {
        let r = rank(&rid);
        self.seen[r] = Some((rid, at));
        self.bytes[r] += bytes as u64;
        let start = *self.window.get_or_insert(at);
        let elapsed = at.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let ms = elapsed.as_millis().max(1) as u64;
            for (bps, bytes) in self.bps.iter_mut().zip(self.bytes.iter_mut()) {
                let measured = *bytes * 8 * 1000 / ms;
                *bps = if *bps == 0 {
                    measured
                } else {
                    (*bps + measured) / 2
                };
                *bytes = 0;
            }
            self.window = Some(at);
        }
    }

    /// The measured bitrate (bit/s) of the layer of rank `rank`, if it is live and measured.
    pub fn bitrate(&self, rank: usize, now: Instant) -> Option<u64> {
        let (_, at) = self.seen.get(rank).copied().flatten()?;
        let bps = self.bps[rank];
        (now.saturating_duration_since(at) < LAYER_TIMEOUT && bps > 0).then_some(bps)
    }

    pub fn is_simulcast(&self) -> bool {
        self.seen.iter().any(Option::is_some)
    }

    /// Every layer seen so far (for keyframe requests that concern them all).
    pub fn all(&self) -> impl Iterator<Item = Rid> + '_ {
        self.seen.iter().flatten().map(|(r, _)| *r)
    }

    /// The layer for a subscriber wanting `want`: the best live one at or below it, else the lowest above.
    pub fn pick(&self, want: usize, now: Instant) -> Option<Rid> {
        let live = |i: usize| {
            self.seen[i]
                .filter(|(_, at)| now.saturating_duration_since(*at) < LAYER_TIMEOUT)
                .map(|(r, _)| r)
        };
        let want = want.min(RANKS - 1);
        (0..=want)
            .rev()
            .find_map(live)
            .or_else(|| (want + 1..RANKS).find_map(live))
    }
}

/// The bandwidth cap (a rank) for a subscriber of `layers` wanting `want` with `budget` bit/s for this track,
/// whose cap is `current` now: the best layer at or below `want` whose bitrate fits (moving up needs
/// [`UPGRADE_HEADROOM`]; keeping the current layer needs `keep` percent of its bitrate), else the lowest. Layers
/// without a measured bitrate yet only count at or below the current cap.
pub(crate) fn fit(
    layers: &Layers,
    want: usize,
    budget: u64,
    current: usize,
    keep: u64,
    now: Instant,
) -> usize {
    let want = want.min(RANKS - 1);
    for r in (0..=want).rev() {
        match layers.bitrate(r, now) {
            Some(bps) => {
                let need = match r.cmp(&current) {
                    std::cmp::Ordering::Greater => bps * UPGRADE_HEADROOM / 100,
                    std::cmp::Ordering::Equal => bps * keep / 100,
                    std::cmp::Ordering::Less => bps,
                };
                if need <= budget {
                    return r;
                }
            }
            None if r <= current && layers.seen[r].is_some() => return r,
            None => {}
        }
    }
    0
}

/// What a subscriber of `layers` wanting `want`, capped at `cap`, needs room for (bit/s): `(next, want)`, the
/// measured bitrate of the next layer up from the cap (with [`UPGRADE_HEADROOM`]; 0 when the cap is at or above
/// `want`: nothing to grow into), and that of the best measured layer up to `want` (with the headroom too). 0
/// while nothing is measured.
pub(crate) fn goal(layers: &Layers, want: usize, cap: usize, now: Instant) -> (u64, u64) {
    let want = want.min(RANKS - 1);
    let with_headroom = |bps: u64| bps * UPGRADE_HEADROOM / 100;
    let best = (0..=want)
        .rev()
        .find_map(|r| layers.bitrate(r, now))
        .map_or(0, with_headroom);
    let next = (cap.min(want) + 1..=want)
        .find_map(|r| layers.bitrate(r, now))
        .map_or(0, with_headroom);
    (next, best.max(next))
}

/// Loss above this (fraction of packets, from RTCP receiver reports) means the downlink is overloaded.
const LOSS_HIGH: f32 = 0.10;
/// Loss below this means there may be room for more.
const LOSS_LOW: f32 = 0.02;
/// Growth of the estimate per loss-free report (percent).
const GROWTH_PERCENT: u64 = 15;
/// After an overload, the estimate does not grow for this long (doubling on each overload, up to the max).
const HOLD_MIN: Duration = Duration::from_secs(10);
const HOLD_MAX: Duration = Duration::from_secs(60);
/// A layer the link is too slow for is held back for at most this long while the lower layer's keyframe is
/// awaited, after at most [`DRAIN_MAX`] for the link's queue to drain ([`LayerState::cap_to`]).
const HOLD_BACK_MAX: Duration = Duration::from_secs(1);
const DRAIN_MAX: Duration = Duration::from_millis(600);
/// After a decrease, the next report still counts loss from before it took effect (receiver reports come about
/// once a second): no second decrease within this time.
const DECREASE_GAP: Duration = Duration::from_millis(1500);
/// The estimate never grows beyond this (bit/s).
const MAX_ESTIMATE: u64 = 1_000_000_000;
/// Loss-free this long resets the hold to its minimum.
const CALM: Duration = Duration::from_secs(30);

/// A loss-based estimate of a subscriber's downlink, fed once a second with the bytes sent to it and the loss
/// it reports (RTCP receiver reports). No estimate (no cap) until the first overload; then it follows what the link
/// delivered, and grows again by [`GROWTH_PERCENT`] per loss-free second after a hold, so a lifted limit is
/// found by trying the next layer (each failed try doubles the hold).
pub(crate) struct LossEstimator {
    estimate: Option<u64>,
    last: Option<(u64, Instant)>,
    hold_until: Option<Instant>,
    hold: Duration,
    calm_since: Option<Instant>,
    /// The estimate grew since the last overload (a try that may have been too much).
    tried: bool,
    /// When the estimate last went down.
    decreased: Option<Instant>,
}

impl Default for LossEstimator {
    fn default() -> Self {
        LossEstimator {
            estimate: None,
            last: None,
            hold_until: None,
            hold: HOLD_MIN,
            calm_since: None,
            tried: false,
            decreased: None,
        }
    }
}

impl LossEstimator {
    /// The current estimate (bit/s); `None`: no limit seen.
    pub fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// A stats report: `bytes_sent` in total so far, `loss` over the last second. Returns the new estimate when it
    /// changed.
    pub fn report(&mut self, now: Instant, bytes_sent: u64, loss: Option<f32>) -> Option<u64> {
        let (last_bytes, last_at) = self.last.replace((bytes_sent, now))?;
        let ms = now.saturating_duration_since(last_at).as_millis() as u64;
        if ms < 200 {
            self.last = Some((last_bytes, last_at));
            return None;
        }
        let sent_bps = bytes_sent.saturating_sub(last_bytes) * 8 * 1000 / ms;
        let loss = loss?;
        let before = self.estimate;
        if loss > LOSS_HIGH {
            // What got through: the sent rate (retransmissions included, they cross the same link) less the loss.
            let delivered = ((sent_bps as f64 * (1.0 - f64::from(loss))) as u64).max(30_000);
            // Unless the last decrease has not shown in the reports yet.
            let settled = self
                .decreased
                .is_none_or(|t| now.saturating_duration_since(t) >= DECREASE_GAP);
            if settled {
                if self.estimate.is_none_or(|e| delivered < e) {
                    self.decreased = Some(now);
                }
                self.estimate = Some(delivered);
            }
            if self.tried {
                // Overloaded again after growing: the last try was too much, wait longer before the next.
                self.hold = (self.hold * 2).min(HOLD_MAX);
                self.tried = false;
            }
            self.hold_until = Some(now + self.hold);
            self.calm_since = None;
        } else if loss < LOSS_LOW {
            let calm = *self.calm_since.get_or_insert(now);
            if now.saturating_duration_since(calm) >= CALM {
                self.hold = HOLD_MIN;
            }
            if let Some(e) = self.estimate {
                if self.hold_until.is_none_or(|t| now >= t) {
                    self.estimate =
                        Some((e.max(sent_bps) * (100 + GROWTH_PERCENT) / 100).min(MAX_ESTIMATE));
                    self.tried = true;
                }
            }
        }
        (self.estimate != before).then_some(self.estimate).flatten()
    }
}

/// A downlink whose round trip is this much above its floor has a queue building up.
const CONGESTED_RTT_RISE: Duration = Duration::from_millis(100);
/// The floor of the round trip rises by this much per report, so that a longer route becomes the new floor.
const FLOOR_CREEP: Duration = Duration::from_millis(1);

/// Whether a subscriber's downlink is congested, from its once-a-second reports: a queue builds up on the way
/// (the round trip [`CONGESTED_RTT_RISE`] above its floor), until the rise is below half that. Loss alone is no
/// congestion: random loss (a radio link) does not grow a queue, and heavy loss from a full one does.
#[derive(Default)]
pub(crate) struct Congestion {
    floor: Option<Duration>,
    congested: bool,
    queue_delay: Duration,
}

impl Congestion {
    /// A report: the longest round trip of the subscriber's video streams since the last one. Returns whether
    /// the downlink is congested now.
    pub fn report(&mut self, rtt: Option<Duration>) -> bool {
        if let Some(rtt) = rtt {
            self.floor = Some(self.floor.map_or(rtt, |f| rtt.min(f + FLOOR_CREEP)));
        }
        self.queue_delay = rtt
            .zip(self.floor)
            .map_or(Duration::ZERO, |(rtt, floor)| rtt.saturating_sub(floor));
        let rise = if self.congested {
            CONGESTED_RTT_RISE / 2
        } else {
            CONGESTED_RTT_RISE
        };
        self.congested = self.queue_delay > rise;
        self.congested
    }

    pub fn congested(&self) -> bool {
        self.congested
    }

    /// How much longer than its floor the last reported round trip was: the delay a queue on the way adds.
    pub fn queue_delay(&self) -> Duration {
        self.queue_delay
    }
}

/// One received RTP packet of a published track, as far as forwarding it needs to know.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PacketPos {
    /// The simulcast layer it belongs to (`None`: not simulcast).
    pub rid: Option<Rid>,
    /// Extended sequence number (no wrap-around).
    pub seq: u64,
    /// RTP timestamp.
    pub time: u32,
    /// RTP clock rate (Hz).
    pub clock_rate: u32,
    /// When it arrived.
    pub arrival: Instant,
    /// The first packet of a keyframe ([`crate::keyframe::starts_keyframe`]).
    pub keyframe: bool,
}

/// What to do with a packet for one subscriber.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Forward it with this extended sequence number and RTP timestamp.
    Forward { seq: u64, time: u32 },
    /// Not for this subscriber; `true` when it waits for a keyframe of its target layer.
    Skip(bool),
}

/// One subscriber's view of one published track: the layer it gets and the rewriting that makes what it
/// receives one continuous RTP stream.
///
/// Forwarding starts (and moves to another layer, or another publisher) at a packet where the decoder can
/// start: any packet of a track that is not simulcast, the first packet of a keyframe otherwise. From there,
/// sequence numbers and timestamps are shifted by fixed offsets: sequence numbers continue from the last one
/// forwarded (the first run keeps the publisher's low 15 bits, so the subscriber's SRTP rollover counter
/// starts at 0), timestamps continue by the wall-clock time in between. Packets older than the start of the
/// run are dropped (they would reuse sequence numbers already sent).
pub(crate) struct LayerState {
    /// Wanted quality rank.
    pub want: usize,
    /// Highest rank the subscriber's bandwidth estimate allows.
    pub cap: usize,
    /// The layer being forwarded (`None` while not simulcast or not started).
    pub current: Option<Rid>,
    /// A run is going on (`current` is its layer).
    started: bool,
    /// Sequence number of the run's first packet.
    first_in: u64,
    /// Added (wrapping) to the sequence numbers and timestamps of the current run.
    seq_offset: u64,
    time_offset: u32,
    /// Highest forwarded sequence number, its timestamp and arrival.
    last_out: Option<(u64, u32, Instant)>,
    /// VP8 and VP9: offsets of the picture id (15 bits) and TL0PICIDX of the current run, computed at its first packet
    /// (`pic_rebase`), and the values sent with the highest forwarded sequence number (`last_out`) so far.
    pic_rebase: bool,
    pic_offset: u16,
    tl0_offset: u8,
    last_pic: Option<u16>,
    last_tl0: Option<u8>,
    /// The last admitted packet began a run at a keyframe, after an earlier run ([`LayerState::take_rebased`]).
    rebased: bool,
    /// Since when the current layer is held back (the link is too slow for it), and for how long nothing at all
    /// is forwarded so that the link's queue drains ([`LayerState::cap_to`]).
    held_since: Option<Instant>,
    drain: Duration,
}

impl Default for LayerState {
    fn default() -> Self {
        LayerState {
            want: DEFAULT_WANT,
            cap: RANKS - 1,
            current: None,
            started: false,
            first_in: 0,
            seq_offset: 0,
            time_offset: 0,
            last_out: None,
            pic_rebase: false,
            pic_offset: 0,
            tl0_offset: 0,
            last_pic: None,
            last_tl0: None,
            rebased: false,
            held_since: None,
            drain: Duration::ZERO,
        }
    }
}

impl LayerState {
    /// The rank to forward: the wanted quality, capped by bandwidth.
    pub fn target(&self) -> usize {
        self.want.min(self.cap)
    }

    /// The track is fed from another publisher, or resumes after a pause: start again at its next keyframe,
    /// continuing the timeline.
    pub fn new_source(&mut self) {
        self.current = None;
        self.started = false;
    }

    /// The bandwidth estimate allows ranks up to `cap`. Going down, the layer being forwarded is held back at
    /// once rather than until the lower layer's keyframe: the link is too slow for it, and what it still sends
    /// would be queued ahead of that keyframe. For `drain` (the delay the link's queue adds, at most
    /// [`DRAIN_MAX`]) nothing is forwarded and no keyframe asked for, so that the keyframe finds the queue empty;
    /// after that the lower layer starts at its next keyframe. Without one within [`HOLD_BACK_MAX`] more, the
    /// current layer comes back.
    pub fn cap_to(&mut self, cap: usize, now: Instant, drain: Duration) {
        if cap < self.cap {
            self.held_since = Some(now);
            self.drain = drain.min(DRAIN_MAX);
        } else {
            self.held_since = None;
        }
        self.cap = cap;
    }

    /// Decides about packet `p` given the layer this subscriber should get (`target`, from [`Layers::pick`]).
    pub fn admit(&mut self, p: &PacketPos, target: Option<Rid>) -> Admit {
        if let (Some(since), Some(cur), Some(t)) = (self.held_since, &self.current, &target) {
            if self.started && rank(t) < rank(cur) && p.rid.is_some() {
                let held = p.arrival.saturating_duration_since(since);
                if held < self.drain {
                    return Admit::Skip(false);
                }
                if p.rid.as_ref() == Some(cur) {
                    if held < self.drain + HOLD_BACK_MAX {
                        return Admit::Skip(true);
                    }
                    // No keyframe of the lower layer in time: better the current layer than nothing.
                    self.held_since = None;
                }
            }
        }
        if !self.started || (p.rid.is_some() && p.rid != self.current) {
            if p.rid.is_some() {
                if target.is_none() || p.rid != target {
                    return Admit::Skip(
                        target.is_some() && (target != self.current || !self.started),
                    );
                }
                if !p.keyframe {
                    return Admit::Skip(true);
                }
            }
            self.start(p);
        }
        if p.seq < self.first_in {
            return Admit::Skip(false);
        }
        let seq = p.seq.wrapping_add(self.seq_offset);
        let time = p.time.wrapping_add(self.time_offset);
        if self.last_out.is_none_or(|(s, _, _)| seq > s) {
            self.last_out = Some((seq, time, p.arrival));
        }
        Admit::Forward { seq, time }
    }

    fn start(&mut self, p: &PacketPos) {
        let (seq, time) = match self.last_out {
            Some((seq, time, at)) => {
                let dt = p.arrival.saturating_duration_since(at);
                let ticks = ((dt.as_secs_f64() * f64::from(p.clock_rate)).round() as u32).max(1);
                (seq + 1, time.wrapping_add(ticks))
            }
            None => (p.seq & 0x7fff, p.time),
        };
        self.seq_offset = seq.wrapping_sub(p.seq);
        self.time_offset = time.wrapping_sub(p.time);
        self.first_in = p.seq;
        self.current = p.rid;
        self.started = true;
        self.pic_rebase = true;
        self.rebased = self.last_out.is_some() && p.keyframe;
        self.held_since = None;
    }

    /// Whether the packet just admitted began a new run at a keyframe (a layer switch, a new source, a resume)
    /// after an earlier run. What the subscriber got before it is no longer needed to decode: retransmitting it
    /// would only take bandwidth from the keyframe.
    pub fn take_rebased(&mut self) -> bool {
        std::mem::take(&mut self.rebased)
    }

    /// VP8 and VP9: the picture id and TL0PICIDX to send for a packet just admitted as `out_seq`. They continue
    /// across runs like sequence numbers: each layer numbers its pictures on its own, and a receiver may drop a
    /// keyframe whose picture id is older than the last one it decoded (VP8 in Chromium: it would never show the
    /// new layer). Picture ids are counted in 15 bits; a 7-bit one is written modulo 128, which continues too.
    pub fn picture_ids(
        &mut self,
        out_seq: u64,
        pic: Option<u16>,
        tl0: Option<u8>,
    ) -> (Option<u16>, Option<u8>) {
        if std::mem::take(&mut self.pic_rebase) {
            self.pic_offset = match (pic, self.last_pic) {
                (Some(p), Some(last)) => last.wrapping_add(1).wrapping_sub(p) & PICTURE_ID_MASK,
                _ => 0,
            };
            self.tl0_offset = match (tl0, self.last_tl0) {
                (Some(t), Some(last)) => last.wrapping_add(1).wrapping_sub(t),
                _ => 0,
            };
        }
        let pic = pic.map(|p| p.wrapping_add(self.pic_offset) & PICTURE_ID_MASK);
        let tl0 = tl0.map(|t| t.wrapping_add(self.tl0_offset));
        // `admit` has just recorded the highest sequence number forwarded: is it this packet's?
        if self.last_out.is_some_and(|(s, _, _)| s == out_seq) {
            self.last_pic = pic.or(self.last_pic);
            self.last_tl0 = tl0.or(self.last_tl0);
        }
        (pic, tl0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_picks() {
        assert_eq!(rank("q"), 0);
        assert_eq!(rank("h"), 1);
        assert_eq!(rank("f"), 2);
        let now = Instant::now();
        let mut l = Layers::default();
        assert!(!l.is_simulcast());
        assert_eq!(l.pick(2, now), None);
        l.seen("q".into(), now, 100);
        l.seen("f".into(), now, 100);
        assert_eq!(l.pick(2, now).as_deref(), Some("f"));
        assert_eq!(l.pick(1, now).as_deref(), Some("q"), "best at or below");
        assert_eq!(l.pick(0, now).as_deref(), Some("q"));
        let later = now + Duration::from_secs(5);
        l.seen("q".into(), later, 100);
        assert_eq!(
            l.pick(2, later).as_deref(),
            Some("q"),
            "a stopped layer is not picked"
        );
        let mut l = Layers::default();
        l.seen("f".into(), now, 100);
        assert_eq!(
            l.pick(0, now).as_deref(),
            Some("f"),
            "else the lowest above"
        );
        assert_eq!(quality("medium"), Some(1));
        assert_eq!(quality("x"), None);
    }

    /// Three layers at 150 kbit/s, 500 kbit/s and 1.5 Mbit/s for two seconds of 30 fps frames.
    fn three_layers(start: Instant) -> (Layers, Instant) {
        let mut l = Layers::default();
        let mut t = start;
        for _ in 0..60 {
            t += Duration::from_micros(33_333);
            l.seen("q".into(), t, 150_000 / 8 / 30);
            l.seen("h".into(), t, 500_000 / 8 / 30);
            l.seen("f".into(), t, 1_500_000 / 8 / 30);
        }
        (l, t)
    }

    #[test]
    fn layer_bitrates_are_measured_per_rank() {
        let (l, t) = three_layers(Instant::now());
        for (rank, want) in [(0, 150_000f64), (1, 500_000.0), (2, 1_500_000.0)] {
            let got = l.bitrate(rank, t).expect("measured") as f64;
            assert!(
                (got - want).abs() / want < 0.1,
                "rank {rank}: {got} vs {want}"
            );
        }
        assert_eq!(
            l.bitrate(2, t + Duration::from_secs(5)),
            None,
            "a stopped layer has no bitrate"
        );
    }

    #[test]
    fn bandwidth_caps_the_layer_with_headroom_to_move_up() {
        let (l, t) = three_layers(Instant::now());
        // (want, budget, current cap) -> the cap, with keep 100.
        for (want, budget, current, cap, why) in [
            (2, 5_000_000, 2, 2, "plenty: the full layer"),
            (2, 1_000_000, 2, 1, "1 Mbit/s: the half layer"),
            (2, 300_000, 2, 0, "300 kbit/s: the quarter layer"),
            (2, 50_000, 2, 0, "nothing fits: still the lowest"),
            (0, 5_000_000, 2, 0, "never above the wanted quality"),
        ] {
            assert_eq!(fit(&l, want, budget, current, 100, t), cap, "{why}");
        }
        // 1.6 Mbit/s fits the full layer (1.5) from above, but is not enough headroom to move up to it.
        assert_eq!(fit(&l, 2, 1_600_000, 2, 100, t), 2);
        assert_eq!(fit(&l, 2, 1_600_000, 1, 100, t), 1);
        assert_eq!(fit(&l, 2, 1_800_000, 1, 100, t), 2);
        // Keeping a layer with `keep` 80: the full layer (1.5) stays down to 1.2 Mbit/s, is not taken at 1.3.
        assert_eq!(fit(&l, 2, 1_250_000, 2, 80, t), 2, "kept at 83 %");
        assert_eq!(fit(&l, 2, 1_150_000, 2, 80, t), 1, "not kept at 77 %");
        assert_eq!(
            fit(&l, 2, 1_300_000, 1, 80, t),
            1,
            "not taken below its bitrate"
        );
        let mut st = LayerState {
            cap: 0,
            ..Default::default()
        };
        assert_eq!(st.target(), 0);
        st.cap = 2;
        st.want = 1;
        assert_eq!(st.target(), 1);
    }

    #[test]
    fn the_estimator_goal_is_the_next_layer_up_and_the_wanted_one() {
        let (l, t) = three_layers(Instant::now());
        let near = |got: u64, want: u64| got.abs_diff(want) * 100 < want * 3;
        let (next, best) = goal(&l, 2, 0, t);
        assert!(
            near(next, 500_000 * 115 / 100),
            "from the quarter layer, the half one: {next}"
        );
        assert!(
            near(best, 1_500_000 * 115 / 100),
            "wanting all: the full one: {best}"
        );
        let (next, best) = goal(&l, 2, 2, t);
        assert!(
            next == 0 && near(best, 1_500_000 * 115 / 100),
            "at the top: {next} {best}"
        );
        let (next, best) = goal(&l, 1, 0, t);
        assert!(
            near(next, 500_000 * 115 / 100) && next == best,
            "wanting medium: {next} {best}"
        );
        assert_eq!(
            goal(&Layers::default(), 2, 0, t),
            (0, 0),
            "nothing measured"
        );
        let later = t + LAYER_TIMEOUT + Duration::from_secs(1);
        assert_eq!(goal(&l, 2, 0, later), (0, 0), "layers gone quiet");
    }

    fn packet(
        rid: Option<&str>,
        seq: u64,
        time: u32,
        arrival: Instant,
        keyframe: bool,
    ) -> PacketPos {
        PacketPos {
            rid: rid.map(Rid::from),
            seq,
            time,
            clock_rate: 90_000,
            arrival,
            keyframe,
        }
    }

    #[test]
    fn a_plain_track_is_forwarded_from_any_packet_with_a_rollover_free_start() {
        let t0 = Instant::now();
        let mut st = LayerState::default();
        // The publisher's stream is long past its first rollover: the subscriber's starts at ROC 0.
        let first = 5 * 65_536 + 40_000;
        let Admit::Forward { seq, time } = st.admit(&packet(None, first, 1000, t0, false), None)
        else {
            panic!("not forwarded");
        };
        assert!(seq < 0x8000, "starts below 2^15: {seq}");
        assert_eq!(time, 1000, "timestamps are kept");
        assert_eq!(
            st.admit(&packet(None, first + 3, 4000, t0, false), None),
            Admit::Forward {
                seq: seq + 3,
                time: 4000
            },
            "gaps are kept (the subscriber NACKs them)"
        );
        assert_eq!(
            st.admit(&packet(None, first - 1, 900, t0, false), None),
            Admit::Skip(false),
            "older than the start: dropped"
        );
        assert_eq!(
            st.admit(&packet(None, first + 1, 1000, t0, false), None),
            Admit::Forward {
                seq: seq + 1,
                time: 1000
            },
            "late but after the start: forwarded in its place"
        );
    }

    #[test]
    fn a_layer_switch_waits_for_a_keyframe_and_continues_both_sequences() {
        let t0 = Instant::now();
        let mut st = LayerState::default();
        let q = Some("q");
        let f = Some("f");
        let rq = Some(Rid::from("q"));
        let rf = Some(Rid::from("f"));
        // Waiting for the quarter layer's keyframe: its delta packets are skipped, asking for one.
        assert_eq!(
            st.admit(&packet(q, 100, 0, t0, false), rq),
            Admit::Skip(true)
        );
        assert_eq!(
            st.admit(&packet(f, 7000, 50, t0, false), rq),
            Admit::Skip(true),
            "other layers are skipped while the target's keyframe is awaited"
        );
        let Admit::Forward { seq: s0, time: _ } = st.admit(&packet(q, 101, 3000, t0, true), rq)
        else {
            panic!("the keyframe starts the stream");
        };
        assert_eq!(st.current, rq);
        assert!(!st.take_rebased(), "the first run has nothing before it");
        let Admit::Forward { seq: s1, time: t1 } = st.admit(&packet(q, 102, 6000, t0, false), rq)
        else {
            panic!();
        };
        assert_eq!(s1, s0 + 1);
        // The target moves up to the full layer: the quarter layer goes on until the full layer's keyframe.
        let t1_arrival = t0 + Duration::from_millis(10);
        assert!(matches!(
            st.admit(&packet(q, 103, 6000, t1_arrival, false), rf),
            Admit::Forward { .. }
        ));
        assert_eq!(
            st.admit(&packet(f, 7001, 9000, t1_arrival, false), rf),
            Admit::Skip(true)
        );
        let later = t0 + Duration::from_millis(110);
        let Admit::Forward { seq: s2, time: t2 } =
            st.admit(&packet(f, 7002, 77_777, later, true), rf)
        else {
            panic!("switched at the full layer's keyframe");
        };
        assert_eq!(st.current, rf);
        assert!(
            st.take_rebased(),
            "a switch at a keyframe: what the old layer left to resend is not needed"
        );
        assert!(!st.take_rebased(), "told once");
        assert_eq!(s2, s1 + 2, "sequence numbers continue without a gap");
        // 100 ms after the last forwarded packet: 9 000 ticks later.
        assert_eq!(t2, t1 + 9000);
        assert_eq!(
            st.admit(&packet(q, 104, 9000, later, false), rf),
            Admit::Skip(false),
            "the old layer is no longer forwarded"
        );
        assert_eq!(
            st.admit(&packet(f, 7003, 80_777, later, false), rf),
            Admit::Forward {
                seq: s2 + 1,
                time: t2 + 3000
            }
        );
        // A new source (another publisher, or a resume) starts again at a keyframe, continuing the numbers.
        st.new_source();
        assert_eq!(
            st.admit(&packet(f, 10, 5, later, false), rf),
            Admit::Skip(true)
        );
        let Admit::Forward { seq: s3, .. } = st.admit(&packet(f, 11, 5, later, true), rf) else {
            panic!();
        };
        assert_eq!(s3, s2 + 2);
    }

    /// The sequence number a packet is forwarded with (it must be forwarded).
    fn forwarded(st: &mut LayerState, p: &PacketPos, target: Option<Rid>) -> u64 {
        match st.admit(p, target) {
            Admit::Forward { seq, .. } => seq,
            skip => panic!("not forwarded: {skip:?}"),
        }
    }

    #[test]
    fn a_bandwidth_cap_holds_the_current_layer_back_until_the_lower_keyframe_or_a_second() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let (f, h) = (Some("f"), Some("h"));
        let (rf, rh) = (Some(Rid::from("f")), Some(Rid::from("h")));
        let mut st = LayerState::default();
        let Admit::Forward { seq: s0, .. } = st.admit(&packet(f, 10, 0, t0, true), rf) else {
            panic!("the full layer starts");
        };
        // The estimate falls below the full layer: it stops at once, while the half layer's keyframe is awaited.
        st.cap_to(1, ms(5), Duration::ZERO);
        assert_eq!(
            st.admit(&packet(f, 11, 90, ms(10), false), rh),
            Admit::Skip(true)
        );
        assert_eq!(
            st.admit(&packet(h, 50, 0, ms(20), false), rh),
            Admit::Skip(true)
        );
        let Admit::Forward { seq: s1, .. } = st.admit(&packet(h, 51, 90, ms(30), true), rh) else {
            panic!("the half layer's keyframe switches");
        };
        assert_eq!(s1, s0 + 1, "no gap for the held-back packets");
        assert!(st.take_rebased());
        // Going down again with no keyframe of the lower layer for a second: the current layer comes back.
        st.cap_to(0, ms(100), Duration::ZERO);
        let q = Some(Rid::from("q"));
        assert_eq!(
            st.admit(&packet(h, 52, 180, ms(600), false), q),
            Admit::Skip(true)
        );
        assert!(matches!(
            st.admit(&packet(h, 53, 270, ms(1200), false), q),
            Admit::Forward { .. }
        ));
        // With a queue to drain: nothing at all for that long, not even the lower layer's keyframe.
        let mut st = LayerState::default();
        st.admit(&packet(f, 10, 0, t0, true), rf);
        st.cap_to(1, ms(0), Duration::from_millis(300));
        assert_eq!(
            st.admit(&packet(f, 11, 90, ms(100), false), rh),
            Admit::Skip(false)
        );
        assert_eq!(
            st.admit(&packet(h, 60, 0, ms(200), true), rh),
            Admit::Skip(false)
        );
        assert_eq!(
            st.admit(&packet(f, 12, 180, ms(310), false), rh),
            Admit::Skip(true)
        );
        assert!(matches!(
            st.admit(&packet(h, 61, 90, ms(320), true), rh),
            Admit::Forward { .. }
        ));
        assert_eq!(st.current, rh);
        // A higher cap never holds anything back.
        let mut st = LayerState {
            cap: 0,
            ..Default::default()
        };
        st.admit(&packet(Some("q"), 1, 0, t0, true), q);
        st.cap_to(2, ms(1), Duration::from_millis(300));
        assert!(matches!(
            st.admit(&packet(Some("q"), 2, 90, ms(2), false), rf),
            Admit::Forward { .. }
        ));
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_layer_switch() {
        let t0 = Instant::now();
        let mut st = LayerState::default();
        let rq = Some(Rid::from("q"));
        let rf = Some(Rid::from("f"));
        // The quarter layer numbers its pictures from 20 000, the full one from 3 (and wraps at 2^15).
        let seq = forwarded(&mut st, &packet(Some("q"), 10, 0, t0, true), rq);
        assert_eq!(
            st.picture_ids(seq, Some(20_000), Some(7)),
            (Some(20_000), Some(7)),
            "the first run keeps them"
        );
        let seq = forwarded(&mut st, &packet(Some("q"), 11, 3000, t0, false), rq);
        assert_eq!(
            st.picture_ids(seq, Some(20_001), Some(7)),
            (Some(20_001), Some(7))
        );
        let seq = forwarded(&mut st, &packet(Some("f"), 500, 9000, t0, true), rf);
        assert_eq!(
            st.picture_ids(seq, Some(3), Some(200)),
            (Some(20_002), Some(8)),
            "the new layer's keyframe follows the last picture forwarded"
        );
        let seq = forwarded(&mut st, &packet(Some("f"), 501, 12000, t0, false), rf);
        assert_eq!(
            st.picture_ids(seq, Some(4), Some(201)),
            (Some(20_003), Some(9))
        );
        // Wrapping: picture ids stay within 15 bits.
        let mut st = LayerState::default();
        let seq = forwarded(&mut st, &packet(Some("q"), 1, 0, t0, true), rq);
        assert_eq!(
            st.picture_ids(seq, Some(0x7fff), None),
            (Some(0x7fff), None)
        );
        let seq = forwarded(&mut st, &packet(Some("f"), 9, 90, t0, true), rf);
        assert_eq!(st.picture_ids(seq, Some(100), None), (Some(0), None));
    }

    #[test]
    fn loss_estimator_follows_an_overloaded_link_and_probes_back_up() {
        let t0 = Instant::now();
        let mut e = LossEstimator::default();
        let mut sent = 0u64;
        let mut t = t0;
        let mut step = |e: &mut LossEstimator, bps: u64, loss: f32, t: &mut Instant| {
            *t += Duration::from_secs(1);
            sent += bps / 8;
            e.report(*t, sent, Some(loss))
        };
        assert_eq!(
            e.report(t, 0, Some(0.0)),
            None,
            "the first report only starts the count"
        );
        assert_eq!(
            step(&mut e, 1_500_000, 0.0, &mut t),
            None,
            "no loss: no estimate, no cap"
        );
        assert_eq!(e.estimate(), None);
        // 1.5 Mbit/s into a link that loses 60 %: the estimate is what got through (600 kbit/s).
        let est = step(&mut e, 1_500_000, 0.6, &mut t).expect("an estimate after loss");
        assert!((590_000..=610_000).contains(&est), "estimate {est}");
        // Held for 10 s after the overload, then growing 15 % per loss-free second.
        for _ in 0..9 {
            assert_eq!(step(&mut e, 300_000, 0.0, &mut t), None, "held");
        }
        let mut grown = est;
        for _ in 0..5 {
            if let Some(x) = step(&mut e, 300_000, 0.0, &mut t) {
                assert!(x > grown);
                grown = x;
            }
        }
        assert!(grown > est * 3 / 2, "grew from {est} to {grown}");
        // Overloaded right after growing: the hold doubles.
        step(&mut e, 1_500_000, 0.5, &mut t).expect("down again");
        assert_eq!(e.hold, Duration::from_secs(20));
        // Moderate loss (between 2 and 10 %) holds the estimate.
        let held = e.estimate();
        for _ in 0..15 {
            step(&mut e, 500_000, 0.05, &mut t);
        }
        assert_eq!(e.estimate(), held);
    }

    #[test]
    fn congestion_is_a_rising_round_trip_until_it_is_half_down() {
        let ms = Duration::from_millis;
        let mut c = Congestion::default();
        assert!(!c.report(Some(ms(20))), "the first round trip is the floor");
        assert!(!c.report(Some(ms(90))), "70 ms above: not yet");
        assert!(c.report(Some(ms(300))), "a queue builds up");
        assert!(
            c.queue_delay() > ms(270) && c.queue_delay() < ms(280),
            "{:?}",
            c.queue_delay()
        );
        assert!(c.report(Some(ms(450))));
        assert!(c.report(Some(ms(80))), "still over 50 ms above the floor");
        assert!(!c.report(Some(ms(40))), "drained: over");
        assert!(
            !c.report(None),
            "no round trip reported: nothing says congested"
        );
        assert_eq!(c.queue_delay(), Duration::ZERO);
        // A longer route: the floor creeps up to it, and the queue delay back down.
        let mut c = Congestion::default();
        c.report(Some(ms(10)));
        for _ in 0..200 {
            c.report(Some(ms(160)));
        }
        assert!(!c.congested());
        assert_eq!(c.queue_delay(), Duration::ZERO);
    }

    #[test]
    fn loss_estimator_decreases_once_per_report_lag() {
        let mut t = Instant::now();
        let mut e = LossEstimator::default();
        let mut sent = 0u64;
        e.report(t, sent, Some(0.0));
        let mut step = |e: &mut LossEstimator, bps: u64, loss: f32, ms: u64| {
            t += Duration::from_millis(ms);
            sent += bps * ms / 8000;
            e.report(t, sent, Some(loss))
        };
        let first = step(&mut e, 800_000, 0.5, 1000).expect("down at the first overload");
        assert_eq!(first, 400_000);
        // The next report (1 s later) still covers the time before the SFU sent less: no second decrease.
        assert_eq!(step(&mut e, 500_000, 0.4, 1000), None);
        assert_eq!(e.estimate(), Some(400_000));
        // Still overloaded once the decrease had time to show: down again.
        let second = step(&mut e, 400_000, 0.3, 1000).expect("down again");
        assert!((279_000..=281_000).contains(&second), "{second}");
    }
}
