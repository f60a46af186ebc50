//! The synthetic media of `switchboard bench sfu`: frames that carry a stamp (publisher, frame number, send
//! time) so that receivers measure loss and one-way latency.
//!
//! Video frames start with a VP8 frame header (a keyframe's 10 bytes with its start code and size, or an
//! interframe's 3-byte tag padded to 10) so the SFU's VP8 depacketizer sees the keyframe flag; the payload
//! descriptor in front of every RTP packet is written by the sender's VP8 packetizer. Audio frames carry the
//! stamp at offset 0. The rest of a frame is filler. Nothing in them decodes.

/// Marks a stamped frame.
pub const MAGIC: [u8; 4] = *b"SBB1";
/// Stamp size: magic, publisher index (u32), frame number (u32), send time in ns (u64), all big endian.
pub const STAMP_LEN: usize = 20;
/// Where the stamp starts in a video frame (after the VP8 frame header).
pub const VIDEO_OFFSET: usize = 10;

/// What a receiver reads from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the sending publisher in this run.
    pub publisher: u32,
    /// Frame number of that publisher's track (0, 1, 2, ...).
    pub seq: u32,
    /// Send time, nanoseconds since the run's shared monotonic epoch.
    pub sent_ns: u64,
}

fn put(buf: &mut [u8], s: Stamp) {
    buf[..4].copy_from_slice(&MAGIC);
    buf[4..8].copy_from_slice(&s.publisher.to_be_bytes());
    buf[8..12].copy_from_slice(&s.seq.to_be_bytes());
    buf[12..20].copy_from_slice(&s.sent_ns.to_be_bytes());
}

fn get(buf: &[u8]) -> Option<Stamp> {
    let b = buf.get(..STAMP_LEN)?;
    if b[..4] != MAGIC {
        return None;
    }
    Some(Stamp {
        publisher: u32::from_be_bytes(b[4..8].try_into().ok()?),
        seq: u32::from_be_bytes(b[8..12].try_into().ok()?),
        sent_ns: u64::from_be_bytes(b[12..20].try_into().ok()?),
    })
}

/// A video frame of `len` bytes (at least `VIDEO_OFFSET + STAMP_LEN`) with a VP8 frame header.
pub fn video_frame(len: usize, keyframe: bool, s: Stamp) -> Vec<u8> {
    let len = len.max(VIDEO_OFFSET + STAMP_LEN);
    let mut f = vec![0u8; len];
    // Frame tag (RFC 6386 9.1): bit 0 = inter frame, bits 1-3 version 0, bit 4 show_frame, 19 bits
    // first-partition size (a plausible 16 bytes).
    let size: u32 = 16;
    let tag: u32 = u32::from(!keyframe) | (1 << 4) | (size << 5);
    f[0] = tag as u8;
    f[1] = (tag >> 8) as u8;
    f[2] = (tag >> 16) as u8;
    if keyframe {
        f[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        f[6..8].copy_from_slice(&640u16.to_le_bytes());
        f[8..10].copy_from_slice(&360u16.to_le_bytes());
    }
    put(&mut f[VIDEO_OFFSET..], s);
    for (i, b) in f[VIDEO_OFFSET + STAMP_LEN..].iter_mut().enumerate() {
        *b = (i as u8) ^ 0x5a;
    }
    f
}

/// Whether a VP8 frame is a keyframe (bit 0 of the frame tag clear).
#[cfg(test)]
pub fn is_vp8_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

/// An audio frame of `len` bytes with the stamp first.
pub fn audio_frame(len: usize, s: Stamp) -> Vec<u8> {
    let mut f = vec![0u8; len.max(STAMP_LEN)];
    put(&mut f, s);
    f
}

/// The stamp of a received frame, video or audio.
pub fn read(frame: &[u8]) -> Option<Stamp> {
    frame
        .get(VIDEO_OFFSET..)
        .and_then(get)
        .or_else(|| get(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Stamp = Stamp {
        publisher: 7,
        seq: 123_456,
        sent_ns: 9_876_543_210_123,
    };

    #[test]
    fn video_stamp_round_trips_and_keeps_the_frame_length() {
        let f = video_frame(6250, false, S);
        assert_eq!(f.len(), 6250);
        assert_eq!(read(&f), Some(S));
    }

    #[test]
    fn keyframe_flag_and_start_code_are_vp8() {
        let k = video_frame(1000, true, S);
        assert!(is_vp8_keyframe(&k));
        assert_eq!(&k[3..6], &[0x9d, 0x01, 0x2a]);
        let d = video_frame(1000, false, S);
        assert!(!is_vp8_keyframe(&d));
        assert_eq!(d[0] & 0x10, 0x10, "show_frame set");
    }

    #[test]
    fn audio_stamp_round_trips() {
        assert_eq!(read(&audio_frame(160, S)), Some(S));
    }

    #[test]
    fn tiny_frames_grow_to_hold_the_stamp() {
        assert_eq!(read(&video_frame(0, true, S)), Some(S));
        assert_eq!(read(&audio_frame(3, S)), Some(S));
    }

    #[test]
    fn foreign_or_truncated_frames_have_no_stamp() {
        assert_eq!(read(&[0u8; 64]), None);
        let f = video_frame(100, false, S);
        assert_eq!(read(&f[..VIDEO_OFFSET + STAMP_LEN - 1]), None);
        assert_eq!(read(&[]), None);
    }
}
