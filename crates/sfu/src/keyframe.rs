//! Where a keyframe starts, read from one RTP payload: the SFU forwards packets, and a subscriber may only be
//! moved to another simulcast layer (or start receiving) at the first packet of that layer's keyframe.
//!
//! Sans-IO and allocation-free: each function looks at the payload descriptor of one packet and never panics
//! on short or malformed input (it answers `false`). For example, the VP8 payload `10 9c 01 2a ...` (S=1, PID=0,
//! no extensions, then a payload header whose P bit is 0) starts a keyframe; `10 9d ...` (P=1) does not — see the
//! unit tests below.

use str0m::format::Codec;
use str0m::rtp::Vp8Descriptor;

/// Whether `payload` (an RTP payload of `codec`) is the first packet of a keyframe.
///
/// Known: VP8 (RFC 7741, str0m's [`Vp8Descriptor`]: a partition start whose VP8 header's P bit is 0), VP9
/// (RFC 9628, base spatial layer), H.264 (RFC 6184: a packet carrying an SPS,
/// or starting an IDR picture) and AV1 (the AV1 RTP specification: the first packet of a coded video sequence).
/// Other codecs answer `false`: their simulcast layers are never switched.
pub(crate) fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => Vp8Descriptor::parse(payload).is_ok_and(|d| d.starts_keyframe(payload)),
        Codec::Vp9 => vp9(payload),
        Codec::H264 => h264(payload),
        Codec::Av1 => av1(payload),
        _ => false,
    }
}

/// RFC 9628 §4.2: a frame beginning (B) that is not inter-picture predicted (P = 0), of spatial layer 0 when
/// layer indices are present.
fn vp9(p: &[u8]) -> bool {
    crate::vp9::Descriptor::parse(p).is_some_and(|d| d.starts_keyframe())
}

/// AV1 RTP payload aggregation header `Z Y W W N - - -`: N is set on the first packet of a coded video sequence
/// (which every keyframe starts), Z when the packet begins with the rest of an earlier packet's OBU.
fn av1(p: &[u8]) -> bool {
    p.first()
        .is_some_and(|h| h & 0x08 != 0 && h & 0x80 == 0 && p.len() > 1)
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// RFC 6184 §5.6–5.8: a single NAL unit that is an SPS or an IDR slice, a STAP-A aggregating one, or the
/// first fragment (FU-A, S bit) of an IDR slice.
fn h264(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else {
        return false;
    };
    match b0 & 0x1f {
        NAL_IDR | NAL_SPS => true,
        STAP_A => {
            let mut rest = &p[1..];
            while rest.len() >= 3 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(nal) = rest.get(2..2 + len) else {
                    return false;
                };
                if nal
                    .first()
                    .is_some_and(|n| matches!(n & 0x1f, NAL_IDR | NAL_SPS))
                {
                    return true;
                }
                rest = &rest[2 + len..];
            }
            false
        }
        FU_A => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == NAL_IDR),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_and_delta_frames_are_told_apart_with_and_without_extensions() {
        // Minimal descriptor: S=1 PID=0, then the payload header (P=0: key frame).
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x9c, 0x01, 0x2a]));
        assert!(!starts_keyframe(Codec::Vp8, &[0x10, 0x9d]), "P=1: delta");
        assert!(
            !starts_keyframe(Codec::Vp8, &[0x00, 0x9c]),
            "not the start of a partition"
        );
        assert!(!starts_keyframe(Codec::Vp8, &[0x11, 0x9c]), "partition 1");
        // X=1: I (15-bit picture id), L (TL0PICIDX), T (TID/KEYIDX) — as Chromium sends.
        let key = [0x90, 0xe0, 0x80 | 0x12, 0x34, 0x07, 0x20, 0x9c];
        assert!(starts_keyframe(Codec::Vp8, &key));
        let mut delta = key;
        delta[6] = 0x9d;
        assert!(!starts_keyframe(Codec::Vp8, &delta));
        // 7-bit picture id only.
        assert!(starts_keyframe(Codec::Vp8, &[0x90, 0x80, 0x05, 0x9c]));
    }

    #[test]
    fn h264_keyframes_start_at_the_sps_or_the_idr() {
        // STAP-A with SPS (len 2) and PPS (len 2), as Chromium sends before an IDR.
        let stap = [24, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        assert!(starts_keyframe(Codec::H264, &stap));
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x88]), "single IDR");
        assert!(
            starts_keyframe(Codec::H264, &[0x7c, 0x85, 0x88]),
            "FU-A start of an IDR"
        );
        assert!(
            !starts_keyframe(Codec::H264, &[0x7c, 0x05, 0x88]),
            "FU-A middle"
        );
        assert!(
            !starts_keyframe(Codec::H264, &[0x7c, 0x81, 0x9a]),
            "FU-A start of a non-IDR slice"
        );
        assert!(!starts_keyframe(Codec::H264, &[0x41, 0x9a]), "P slice");
        // A STAP-A whose declared length runs past the packet.
        assert!(!starts_keyframe(Codec::H264, &[24, 0, 9, 0x67]));
    }

    #[test]
    fn av1_keyframes_start_a_coded_video_sequence() {
        // N=1, W=2, then an OBU (a sequence header, type 1: 0x0a).
        assert!(starts_keyframe(Codec::Av1, &[0x28, 0x0a, 0x0b]));
        assert!(
            !starts_keyframe(Codec::Av1, &[0x20, 0x32, 0x00]),
            "N=0: not a new sequence"
        );
        assert!(
            !starts_keyframe(Codec::Av1, &[0x88, 0x32]),
            "Z=1: a continuation"
        );
        assert!(
            !starts_keyframe(Codec::Av1, &[0x08]),
            "nothing after the header"
        );
    }

    #[test]
    fn vp9_keyframes_begin_unpredicted_in_the_base_layer() {
        assert!(starts_keyframe(Codec::Vp9, &[0x08]), "B=1 P=0");
        assert!(!starts_keyframe(Codec::Vp9, &[0x48]), "predicted");
        assert!(!starts_keyframe(Codec::Vp9, &[0x00]), "not a beginning");
        // I (15-bit picture id) and L: spatial layer 0, then 1.
        assert!(starts_keyframe(Codec::Vp9, &[0xa8, 0x80, 0x01, 0x00, 0x00]));
        assert!(!starts_keyframe(
            Codec::Vp9,
            &[0xa8, 0x80, 0x01, 0x02, 0x00]
        ));
    }

    #[test]
    fn no_payload_makes_it_panic_every_two_byte_one_and_random_longer_ones() {
        let codecs = [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1];
        for codec in codecs {
            for a in 0..=255u8 {
                starts_keyframe(codec, &[a]);
                for b in 0..=255u8 {
                    starts_keyframe(codec, &[a, b]);
                }
            }
        }
        // xorshift64: 20 000 payloads of 3..64 bytes, with descriptor and NAL bits set often.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = [0u8; 64];
        let mut keyframes = 0;
        for i in 0..20_000 {
            let len = 3 + (next() % 62) as usize;
            for byte in &mut buf[..len] {
                *byte = next() as u8;
            }
            if starts_keyframe(codecs[i % codecs.len()], &buf[..len]) {
                keyframes += 1;
            }
        }
        assert!(
            keyframes > 0,
            "random payloads sometimes look like keyframes"
        );
    }

    #[test]
    fn short_or_foreign_payloads_are_never_keyframes() {
        for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1, Codec::Opus] {
            assert!(!starts_keyframe(codec, &[]));
        }
        assert!(!starts_keyframe(Codec::Opus, &[0x28, 0x0a, 0x0b]));
        assert!(!starts_keyframe(Codec::Vp8, &[0x90]));
        assert!(!starts_keyframe(Codec::Vp8, &[0x90, 0x80]));
        assert!(!starts_keyframe(Codec::Vp9, &[0xa8]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c]));
        assert!(!starts_keyframe(Codec::H265, &[0x10, 0x9c]));
    }
}
