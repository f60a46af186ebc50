//! Data channels in `sfu` rooms.
//!
//! Every participant opens the same three out-of-band negotiated channels with the SFU as it does with a mesh
//! peer (`data` id 0 reliable+ordered, `lossy` id 1 unordered without retransmissions, `file` id 2
//! reliable+ordered). Each message carries a routing header, the address and a newline, before its payload:
//!
//! - participant → SFU: `<to>\n<payload>`: `to` empty = every other participant of the room, a participant id
//!   = that participant only, `sfu` = a control message for the SFU itself (JSON).
//! - SFU → participant: `<from>\n<payload>`: `from` is the sender's participant id.
//!
//! Text stays text and binary stays binary (the header is ASCII). The SFU copies each message once into a
//! reusable buffer with the new header and writes it to every recipient's SCTP association; a recipient whose
//! SCTP send buffer is full gets the message queued (one shared `Arc<[u8]>` for all such recipients), up to
//! [`QUEUE_MAX`] bytes per recipient. Unreliable (`lossy`) messages are never queued: dropped, as the channel
//! allows.

use std::collections::VecDeque;
use std::sync::Arc;

use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::Rtc;

/// The negotiated channels: (label, SCTP stream id, ordered, reliability).
pub(crate) const CHANNELS: [(&str, u16, bool, Reliability); 3] = [
    ("data", 0, true, Reliability::Reliable),
    (
        "lossy",
        1,
        false,
        Reliability::MaxRetransmits { retransmits: 0 },
    ),
    ("file", 2, true, Reliability::Reliable),
];
/// Index of the unreliable channel in [`CHANNELS`].
pub(crate) const LOSSY: usize = 1;
/// Longest address in a routing header (participant ids are far shorter).
pub(crate) const MAX_ADDR: usize = 64;
/// The address of control messages for the SFU.
pub(crate) const SFU_ADDR: &[u8] = b"sfu";
/// Bytes queued for one recipient (beyond its SCTP send buffer) before reliable messages are dropped.
pub(crate) const QUEUE_MAX: usize = 16 * 1024 * 1024;
/// SCTP send buffer of each association (str0m's default is 128 KiB: too little to keep a file moving).
pub(crate) const SCTP_BUFFER: usize = 1024 * 1024;

/// Splits `<addr>\n<payload>`; `None` when there is no header.
pub(crate) fn split_header(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = buf.len().min(MAX_ADDR + 1);
    let i = buf[..n].iter().position(|&b| b == b'\n')?;
    Some((&buf[..i], &buf[i + 1..]))
}

/// Creates the negotiated channels on a new `Rtc`.
pub(crate) fn create_channels(rtc: &mut Rtc) -> [Option<ChannelId>; 3] {
    let mut api = rtc.direct_api();
    CHANNELS.map(|(label, id, ordered, reliability)| {
        Some(api.create_data_channel(ChannelConfig {
            label: label.into(),
            ordered,
            reliability,
            negotiated: Some(id),
            protocol: String::new(),
        }))
    })
}

struct Queued {
    chan: usize,
    binary: bool,
    data: Arc<[u8]>,
}

/// One recipient's data channels and its queue of messages waiting for SCTP buffer space.
#[derive(Default)]
pub(crate) struct DataOut {
    pub chans: [Option<ChannelId>; 3],
    queue: VecDeque<Queued>,
    bytes: usize,
}

/// Outcome of [`DataOut::send`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    Written,
    Queued,
    Dropped,
}

impl DataOut {
    pub fn new(chans: [Option<ChannelId>; 3]) -> Self {
        DataOut {
            chans,
            ..Default::default()
        }
    }

    pub fn index_of(&self, id: ChannelId) -> Option<usize> {
        self.chans.iter().position(|c| *c == Some(id))
    }

    /// Writes `buf` on channel `chan`, or queues it (sharing `shared` among recipients).
    pub fn send(
        &mut self,
        rtc: &mut Rtc,
        chan: usize,
        binary: bool,
        buf: &[u8],
        shared: &mut Option<Arc<[u8]>>,
    ) -> Sent {
        let Some(cid) = self.chans.get(chan).copied().flatten() else {
            return Sent::Dropped;
        };
        if self.queue.is_empty() {
            if let Some(mut ch) = rtc.channel(cid) {
                if matches!(ch.write(binary, buf), Ok(true)) {
                    return Sent::Written;
                }
            }
        }
        if chan == LOSSY || self.bytes + buf.len() > QUEUE_MAX {
            return Sent::Dropped;
        }
        let data = shared.get_or_insert_with(|| Arc::from(buf)).clone();
        self.bytes += data.len();
        self.queue.push_back(Queued { chan, binary, data });
        Sent::Queued
    }

    /// Writes queued messages while the SCTP buffer has room.
    pub fn flush(&mut self, rtc: &mut Rtc) {
        while let Some(q) = self.queue.front() {
            let written = match self.chans[q.chan].and_then(|cid| rtc.channel(cid)) {
                Some(mut ch) => match ch.write(q.binary, &q.data) {
                    Ok(true) => true,
                    // Larger than the whole buffer: would never fit.
                    Ok(false) if q.data.len() > SCTP_BUFFER => true,
                    Ok(false) => return,
                    Err(_) => true,
                },
                None => return, // not open (yet): keep
            };
            if written {
                self.bytes -= q.data.len();
                self.queue.pop_front();
            }
        }
    }

    pub fn queued(&self) -> bool {
        !self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_split() {
        assert_eq!(
            split_header(b"p_1\nhello"),
            Some((&b"p_1"[..], &b"hello"[..]))
        );
        assert_eq!(split_header(b"\n{}"), Some((&b""[..], &b"{}"[..])));
        assert_eq!(split_header(b"\n"), Some((&b""[..], &b""[..])));
        assert_eq!(split_header(b"no header"), None);
        let long = [b'a'; MAX_ADDR + 1];
        let mut m = long.to_vec();
        m.push(b'\n');
        assert_eq!(split_header(&m), None, "address too long");
        let mut ok = vec![b'a'; MAX_ADDR];
        ok.push(b'\n');
        assert!(split_header(&ok).is_some());
    }
}
