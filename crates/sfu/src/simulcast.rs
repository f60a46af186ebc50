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

/// The layers a publisher currently sends on one track.
#[derive(Default)]
pub(crate) struct Layers {
    seen: [Option<(Rid, Instant)>; RANKS],
}

impl Layers {
    pub fn seen(&mut self, rid: Rid, at: Instant) {
        self.seen[rank(&rid)] = Some((rid, at));
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
            current: None,
            offset: 0,
            last_out: None,
        }
    }
}

impl LayerState {
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
        l.seen("q".into(), now);
        l.seen("f".into(), now);
        assert_eq!(l.pick(2, now).as_deref(), Some("f"));
        assert_eq!(l.pick(1, now).as_deref(), Some("q"), "best at or below");
        assert_eq!(l.pick(0, now).as_deref(), Some("q"));
        let later = now + Duration::from_secs(5);
        l.seen("q".into(), later);
        assert_eq!(
            l.pick(2, later).as_deref(),
            Some("q"),
            "a stopped layer is not picked"
        );
        let mut l = Layers::default();
        l.seen("f".into(), now);
        assert_eq!(
            l.pick(0, now).as_deref(),
            Some("f"),
            "else the lowest above"
        );
        assert_eq!(quality("medium"), Some(1));
        assert_eq!(quality("x"), None);
    }
}
