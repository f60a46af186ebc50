//! TURN ChannelData framing (RFC 8656 §12.4) and stream framing.

use crate::attr::pad4;
use crate::{StunError, HEADER_LEN};

/// Lowest valid channel number.
pub const CHANNEL_MIN: u16 = 0x4000;
/// Highest channel number a client should pick (RFC 8656).
pub const CHANNEL_MAX: u16 = 0x4FFF;
/// Highest channel number accepted on the wire: RFC 5766 allowed 0x4000-0x7FFF and deployed clients
/// (coturn's `turnutils_uclient`, among others) still use that range.
pub const CHANNEL_MAX_ACCEPTED: u16 = 0x7FFF;

/// A ChannelData message borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Do the first two bits say ChannelData (0b01)?
    pub fn is_channel_data(buf: &[u8]) -> bool {
        buf.first().is_some_and(|b| b >> 6 == 1)
    }

    /// Parse one ChannelData message; trailing bytes (padding) are ignored.
    pub fn parse(buf: &'a [u8]) -> Result<ChannelData<'a>, StunError> {
        if buf.len() < 4 {
            return Err(StunError::Truncated);
        }
        let channel = u16::from_be_bytes([buf[0], buf[1]]);
        if !(CHANNEL_MIN..=CHANNEL_MAX_ACCEPTED).contains(&channel) {
            return Err(StunError::BadChannel(channel));
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let data = buf.get(4..4 + len).ok_or(StunError::Truncated)?;
        Ok(ChannelData { channel, data })
    }

    /// Append a ChannelData message to `out`. `pad` adds zero padding to a multiple of 4 (required over
    /// TCP/TLS, optional over UDP).
    pub fn encode(
        out: &mut Vec<u8>,
        channel: u16,
        data: &[u8],
        pad: bool,
    ) -> Result<(), StunError> {
        if !(CHANNEL_MIN..=CHANNEL_MAX_ACCEPTED).contains(&channel) {
            return Err(StunError::BadChannel(channel));
        }
        if data.len() > 0xFFFF {
            return Err(StunError::TooLarge);
        }
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        if pad {
            out.resize(out.len() + pad4(data.len()) - data.len(), 0);
        }
        Ok(())
    }
}

/// Length of the next frame in a TCP/TLS byte stream carrying STUN and ChannelData (padded).
/// `Ok(None)` means more bytes are needed to know; `Err` means the stream is not STUN/ChannelData.
pub fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, StunError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    match buf[0] >> 6 {
        0 => {
            if len & 3 != 0 {
                return Err(StunError::BadLength);
            }
            Ok(Some(HEADER_LEN + len))
        }
        1 => Ok(Some(4 + pad4(len))),
        _ => Err(StunError::NotStun),
    }
}
