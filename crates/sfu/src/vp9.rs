//! The VP9 RTP payload descriptor (RFC 9628 §4.2): where a packet keeps its picture id and TL0PICIDX, and the
//! same payload with them replaced. A subscriber moved to another simulcast layer gets picture ids that
//! continue the ones it had (as for VP8), rather than the new layer's own numbering.
//!
//! Sans-IO. Reading allocates nothing; [`Copies`] makes one rewritten copy per distinct pair of ids of a packet,
//! shared by the subscribers that need it. Never panics on short or malformed input: [`Descriptor::parse`]
//! answers `None`.
//!
//! ```text
//!  I P L F B E V Z      first byte
//!  M PICTURE ID         if I (M: a 15-bit picture id, continued in the next byte)
//!  TID U SID D          if L
//!  TL0PICIDX            if L and not F (non-flexible mode)
//! ```

use std::sync::Arc;

/// The fields of a VP9 payload descriptor the SFU reads or rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// The picture id (7 or 15 bits), if present (I).
    pub pic: Option<u16>,
    /// The picture id has 15 bits (M).
    long_pic: bool,
    /// TL0PICIDX, if present (L and not F).
    pub tl0: Option<u8>,
    /// Where TL0PICIDX is.
    tl0_at: usize,
    /// Not inter-picture predicted (P = 0).
    pub independent: bool,
    /// Starts a frame (B).
    pub begins: bool,
    /// The spatial layer id (SID), 0 without layer indices.
    pub spatial: u8,
}

impl Descriptor {
    /// Reads the descriptor at the start of `p`, or `None` when `p` is too short for the fields it announces.
    pub(crate) fn parse(p: &[u8]) -> Option<Descriptor> {
        let b0 = *p.first()?;
        let mut at = 1;
        let (mut pic, mut long_pic) = (None, false);
        if b0 & 0x80 != 0 {
            let first = *p.get(at)?;
            if first & 0x80 != 0 {
                let second = *p.get(at + 1)?;
                pic = Some(u16::from_be_bytes([first & 0x7f, second]));
                long_pic = true;
                at += 2;
            } else {
                pic = Some(u16::from(first));
                at += 1;
            }
        }
        let (mut tl0, mut spatial) = (None, 0);
        let mut tl0_at = 0;
        if b0 & 0x20 != 0 {
            let layers = *p.get(at)?;
            spatial = (layers >> 1) & 0x07;
            at += 1;
            if b0 & 0x10 == 0 {
                tl0 = Some(*p.get(at)?);
                tl0_at = at;
            }
        }
        Some(Descriptor {
            pic,
            long_pic,
            tl0,
            tl0_at,
            independent: b0 & 0x40 == 0,
            begins: b0 & 0x08 != 0,
            spatial,
        })
    }

    /// Whether the packet is the first of a keyframe: a frame beginning (B) that is not inter-picture predicted
    /// (P = 0), of spatial layer 0.
    pub(crate) fn starts_keyframe(&self) -> bool {
        self.begins && self.independent && self.spatial == 0
    }

    /// `payload` (the one this descriptor was read from) with `pic` and `tl0` in place of its own, into `out`.
    /// A field the descriptor lacks stays absent; a 7-bit picture id keeps 7 bits.
    pub(crate) fn patch(
        &self,
        payload: &[u8],
        pic: Option<u16>,
        tl0: Option<u8>,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(payload);
        if let (Some(_), Some(p)) = (self.pic, pic) {
            if self.long_pic {
                let [hi, lo] = (p & 0x7fff).to_be_bytes();
                out[1] = 0x80 | hi;
                out[2] = lo;
            } else {
                out[1] = (p & 0x7f) as u8;
            }
        }
        if let (Some(_), Some(t)) = (self.tl0, tl0) {
            out[self.tl0_at] = t;
        }
    }
}

/// A picture id and a TL0PICIDX.
type Ids = (Option<u16>, Option<u8>);

/// The payloads of one packet as forwarded: the original, or a copy per distinct (picture id, TL0PICIDX) asked
/// for, made once and shared by every subscriber that gets those ids.
#[derive(Debug, Default)]
pub(crate) struct Copies {
    copies: Vec<(Ids, Arc<[u8]>)>,
    buf: Vec<u8>,
}

impl Copies {
    /// A new packet: the copies of the last one are no longer asked for.
    pub(crate) fn clear(&mut self) {
        self.copies.clear();
    }

    /// `payload` (described by `d`) with `pic` and `tl0`: the original itself when they are its own ids.
    pub(crate) fn payload(
        &mut self,
        d: &Descriptor,
        payload: &Arc<[u8]>,
        pic: Option<u16>,
        tl0: Option<u8>,
    ) -> Arc<[u8]> {
        if (pic, tl0) == (d.pic, d.tl0) {
            return payload.clone();
        }
        if let Some((_, copy)) = self.copies.iter().find(|(ids, _)| *ids == (pic, tl0)) {
            return copy.clone();
        }
        d.patch(payload, pic, tl0, &mut self.buf);
        let copy: Arc<[u8]> = self.buf.as_slice().into();
        self.copies.push(((pic, tl0), copy.clone()));
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picture_id_and_tl0picidx_are_read_in_each_layout() {
        // I, M (15-bit 0x1234), L, non-flexible: TID 1 U 0 SID 0 D 0, TL0PICIDX 7; B; then payload.
        let p = [0xa8, 0x92, 0x34, 0x20, 0x07, 0xde, 0xad];
        let d = Descriptor::parse(&p).unwrap();
        assert_eq!((d.pic, d.tl0, d.spatial), (Some(0x1234), Some(7), 0));
        assert!(d.long_pic && d.begins && d.independent);
        // 7-bit picture id, no layer indices, predicted.
        let d = Descriptor::parse(&[0xc0, 0x05, 0xff]).unwrap();
        assert_eq!((d.pic, d.tl0), (Some(5), None));
        assert!(!d.long_pic && !d.independent && !d.begins);
        // Flexible mode: layer indices (SID 2) but no TL0PICIDX.
        let d = Descriptor::parse(&[0xb8, 0x81, 0x00, 0x04, 0x99]).unwrap();
        assert_eq!((d.pic, d.tl0, d.spatial), (Some(0x100), None, 2));
        // No picture id at all.
        let d = Descriptor::parse(&[0x08, 0x00]).unwrap();
        assert_eq!((d.pic, d.tl0), (None, None));
    }

    #[test]
    fn short_or_truncated_descriptors_are_refused_not_read_past_the_end() {
        assert_eq!(Descriptor::parse(&[]), None);
        assert_eq!(Descriptor::parse(&[0x80]), None, "I without the picture id");
        assert_eq!(
            Descriptor::parse(&[0x80, 0x80]),
            None,
            "M without the second byte"
        );
        assert_eq!(
            Descriptor::parse(&[0xa0, 0x01]),
            None,
            "L without the layer byte"
        );
        assert_eq!(
            Descriptor::parse(&[0xa0, 0x01, 0x00]),
            None,
            "non-flexible L without TL0PICIDX"
        );
    }

    #[test]
    fn a_patch_replaces_the_ids_and_nothing_else() {
        let p = [0xa8, 0x92, 0x34, 0x20, 0x07, 0xde, 0xad];
        let d = Descriptor::parse(&p).unwrap();
        let mut out = Vec::new();
        d.patch(&p, Some(0x7ffe), Some(200), &mut out);
        assert_eq!(out, [0xa8, 0xff, 0xfe, 0x20, 200, 0xde, 0xad]);
        let back = Descriptor::parse(&out).unwrap();
        assert_eq!((back.pic, back.tl0), (Some(0x7ffe), Some(200)));
        // A 7-bit picture id keeps 7 bits (and its M bit clear).
        let p = [0xc0, 0x05, 0xff];
        let d = Descriptor::parse(&p).unwrap();
        d.patch(&p, Some(0x1234), Some(9), &mut out);
        assert_eq!(
            out,
            [0xc0, 0x34, 0xff],
            "0x1234 mod 128; no TL0PICIDX to write"
        );
        // Nothing to replace: the payload as it was.
        let p = [0x08, 0x00, 0x01];
        Descriptor::parse(&p)
            .unwrap()
            .patch(&p, Some(3), Some(4), &mut out);
        assert_eq!(out, p);
    }

    #[test]
    fn subscribers_asking_for_the_same_ids_share_one_copy_and_own_ids_need_none() {
        let original: Arc<[u8]> = Arc::from(&[0xa8, 0x92, 0x34, 0x20, 0x07, 0xde][..]);
        let d = Descriptor::parse(&original).unwrap();
        let mut copies = Copies::default();
        let own = copies.payload(&d, &original, Some(0x1234), Some(7));
        assert!(Arc::ptr_eq(&own, &original), "its own ids: no copy");
        let a = copies.payload(&d, &original, Some(5), Some(1));
        let b = copies.payload(&d, &original, Some(5), Some(1));
        assert!(Arc::ptr_eq(&a, &b), "the same ids: one copy");
        assert_eq!(
            Descriptor::parse(&a).map(|d| (d.pic, d.tl0)),
            Some((Some(5), Some(1)))
        );
        let c = copies.payload(&d, &original, Some(6), Some(1));
        assert!(!Arc::ptr_eq(&a, &c), "other ids: another copy");
        assert_eq!(
            &original[..],
            &[0xa8, 0x92, 0x34, 0x20, 0x07, 0xde],
            "the original is untouched"
        );
        copies.clear();
        let d2 = copies.payload(&d, &original, Some(5), Some(1));
        assert!(!Arc::ptr_eq(&a, &d2), "a new packet starts without copies");
    }

    #[test]
    fn parse_and_patch_survive_arbitrary_bytes() {
        let mut seed = 0x9e37_79b9_u32;
        let mut out = Vec::new();
        for len in 0..64usize {
            for _ in 0..64 {
                let p: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed as u8
                    })
                    .collect();
                if let Some(d) = Descriptor::parse(&p) {
                    d.patch(&p, Some(seed as u16), Some(seed as u8), &mut out);
                    assert_eq!(out.len(), p.len());
                    let again = Descriptor::parse(&out).unwrap();
                    assert_eq!(again.spatial, d.spatial);
                }
            }
        }
    }
}
