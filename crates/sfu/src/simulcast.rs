//! Simulcast: which layer of a published video each subscriber gets, and switching between layers.
//!
//! A publisher sends up to three encodings of a video on one m-line, told apart by their RTP stream id (`rid`):
//! `q` (quarter resolution), `h` (half), `f` (full); other rid names are ranked the same way (`l`/`low`/`0`,
//! `m`/`mid`/`1`, anything else high). Each subscriber of the track has a wanted quality (low/medium/high, by
//! default high) and gets the best layer the publisher currently sends at or below it (else the lowest above).
//! A switch happens only on a keyframe of the new layer (one is requested from the publisher), and the media
//! time of the new layer is rebased so the subscriber's decoder sees one continuous stream: str0m's writer
//! packetizes with its own sequence numbers, and the timestamps continue from the last forwarded frame by the
//! wall-clock time in between.
//!
//! Bandwidth: the SFU measures each layer's bitrate ([`Layers::bitrate`]) and caps what a subscriber gets by
//! its bandwidth estimate (TWCC or REMB, see [`fit`]): the forwarded rank is the lower of the wanted quality
//! and that cap ([`LayerState::target`]).

use std::time::{Duration, Instant};

use str0m::media::{MediaData, MediaTime, Rid};

/// A layer not seen for this long is considered stopped (the publisher dropped it, e.g. for bandwidth).
const LAYER_TIMEOUT: Duration = Duration::from_millis(1500);

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
    /// A frame of layer `rid` (`bytes` long) arrived at `at`.
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
/// [`UPGRADE_HEADROOM`]), else the lowest. Layers without a measured bitrate yet only count at or below the
/// current cap.
pub(crate) fn fit(
    layers: &Layers,
    want: usize,
    budget: u64,
    current: usize,
    now: Instant,
) -> usize {
    let want = want.min(RANKS - 1);
    for r in (0..=want).rev() {
        match layers.bitrate(r, now) {
            Some(bps) => {
                let need = if r > current {
                    bps * UPGRADE_HEADROOM / 100
                } else {
                    bps
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

/// What to do with a frame for one subscriber.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Forward it with this media time.
    Forward(MediaTime),
    /// Not for this subscriber; `true` when it waits for a keyframe of its target layer.
    Skip(bool),
}

/// One subscriber's view of one simulcast track.
pub(crate) struct LayerState {
    /// Wanted quality rank.
    pub want: usize,
    /// Highest rank the subscriber's bandwidth estimate allows.
    pub cap: usize,
    /// The layer being forwarded.
    pub current: Option<Rid>,
    /// Added to the media time of the current layer.
    offset: i64,
    /// Last forwarded media time (ticks) and its arrival time.
    last_out: Option<(u64, Instant)>,
}

impl Default for LayerState {
    fn default() -> Self {
        LayerState {
            want: DEFAULT_WANT,
            cap: RANKS - 1,
            current: None,
            offset: 0,
            last_out: None,
        }
    }
}

impl LayerState {
    /// The rank to forward: the wanted quality, capped by bandwidth.
    pub fn target(&self) -> usize {
        self.want.min(self.cap)
    }

    /// The track is fed from another publisher: start again at its next keyframe, continuing the timeline.
    pub fn new_source(&mut self) {
        self.current = None;
    }

    /// Decides about frame `data` given the layer this subscriber should get (`target`, from [`Layers::pick`]).
    pub fn admit(&mut self, data: &MediaData, target: Option<Rid>) -> Admit {
        if data.rid.is_none() {
            return Admit::Forward(data.time);
        }
        if data.rid != self.current {
            if target.is_none() || data.rid != target {
                return Admit::Skip(target.is_some() && target != self.current);
            }
            if !data.is_keyframe() {
                return Admit::Skip(true);
            }
            // Switch: continue the timeline from the last forwarded frame.
            let t_in = data.time.numer() as i64;
            self.offset = match self.last_out {
                Some((ts, at)) => {
                    let dt = data.network_time.saturating_duration_since(at);
                    let ticks =
                        ((dt.as_secs_f64() * data.time.denom() as f64).round() as i64).max(1);
                    ts as i64 + ticks - t_in
                }
                None => 0,
            };
            self.current = data.rid;
        }
        let out = (data.time.numer() as i64 + self.offset).max(0) as u64;
        self.last_out = Some((out, data.network_time));
        Admit::Forward(MediaTime::new(out, data.time.frequency()))
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
        assert_eq!(fit(&l, 2, 5_000_000, 2, t), 2, "plenty: the full layer");
        assert_eq!(fit(&l, 2, 1_000_000, 2, t), 1, "1 Mbit/s: the half layer");
        assert_eq!(
            fit(&l, 2, 300_000, 2, t),
            0,
            "300 kbit/s: the quarter layer"
        );
        assert_eq!(
            fit(&l, 2, 50_000, 2, t),
            0,
            "nothing fits: still the lowest"
        );
        assert_eq!(
            fit(&l, 0, 5_000_000, 2, t),
            0,
            "never above the wanted quality"
        );
        // 1.6 Mbit/s fits the full layer (1.5) from above, but is not enough headroom to move up to it.
        assert_eq!(fit(&l, 2, 1_600_000, 2, t), 2);
        assert_eq!(fit(&l, 2, 1_600_000, 1, t), 1);
        assert_eq!(fit(&l, 2, 1_800_000, 1, t), 2);
        let mut st = LayerState {
            cap: 0,
            ..Default::default()
        };
        assert_eq!(st.target(), 0);
        st.cap = 2;
        st.want = 1;
        assert_eq!(st.target(), 1);
    }
}
