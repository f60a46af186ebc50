//! Message encoder writing into a caller-provided buffer.

use std::net::SocketAddr;

use crate::attr::{attr_type, pad4, Attribute, U16List};
use crate::integrity::{fingerprint_parts, hmac_sha1_parts, hmac_sha256_parts};
use crate::{MessageType, StunError, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// Appends one STUN message to a `Vec<u8>`. The header's length field is kept up to date after every
/// attribute, so the bytes from [`MessageWriter::start`] are always a valid message.
pub struct MessageWriter<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    tid: TransactionId,
}

impl<'b> MessageWriter<'b> {
    /// Start a message at the current end of `buf` (call `buf.clear()` first to reuse a buffer).
    pub fn new(buf: &'b mut Vec<u8>, typ: MessageType, tid: TransactionId) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&typ.to_u16().to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid.0);
        MessageWriter { buf, start, tid }
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.tid
    }
    /// Offset of the message in the buffer.
    pub fn start(&self) -> usize {
        self.start
    }
    /// The encoded message so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
    /// Finish and return the encoded message.
    pub fn finish(self) -> &'b [u8] {
        &self.buf[self.start..]
    }

    fn body_len(&self) -> usize {
        self.buf.len() - self.start - HEADER_LEN
    }

    fn set_len(&mut self, len: usize) {
        let l = (len as u16).to_be_bytes();
        self.buf[self.start + 2] = l[0];
        self.buf[self.start + 3] = l[1];
    }

    fn check_room(&self, value_len: usize) -> Result<(), StunError> {
        if value_len > 0xFFFF || self.body_len() + 4 + pad4(value_len) > 0xFFFF {
            return Err(StunError::TooLarge);
        }
        Ok(())
    }

    /// Append any attribute.
    pub fn add(&mut self, attr: &Attribute<'_>) -> Result<(), StunError> {
        let vlen = attr.value_len();
        self.check_room(vlen)?;
        self.buf.extend_from_slice(&attr.typ().to_be_bytes());
        self.buf.extend_from_slice(&(vlen as u16).to_be_bytes());
        attr.encode_value(self.buf, &self.tid);
        self.buf.resize(self.buf.len() + pad4(vlen) - vlen, 0);
        let body = self.body_len();
        self.set_len(body);
        Ok(())
    }

    /// Append an attribute with a raw value.
    pub fn add_raw(&mut self, typ: u16, value: &[u8]) -> Result<(), StunError> {
        self.add(&Attribute::Other { typ, value })
    }
    pub fn add_mapped_address(&mut self, a: SocketAddr) -> Result<(), StunError> {
        self.add(&Attribute::MappedAddress(a))
    }
    pub fn add_xor_mapped_address(&mut self, a: SocketAddr) -> Result<(), StunError> {
        self.add(&Attribute::XorMappedAddress(a))
    }
    pub fn add_xor_peer_address(&mut self, a: SocketAddr) -> Result<(), StunError> {
        self.add(&Attribute::XorPeerAddress(a))
    }
    pub fn add_xor_relayed_address(&mut self, a: SocketAddr) -> Result<(), StunError> {
        self.add(&Attribute::XorRelayedAddress(a))
    }
    pub fn add_username(&mut self, s: &str) -> Result<(), StunError> {
        self.add(&Attribute::Username(s))
    }
    pub fn add_realm(&mut self, s: &str) -> Result<(), StunError> {
        self.add(&Attribute::Realm(s))
    }
    pub fn add_nonce(&mut self, s: &str) -> Result<(), StunError> {
        self.add(&Attribute::Nonce(s))
    }
    pub fn add_software(&mut self, s: &str) -> Result<(), StunError> {
        self.add(&Attribute::Software(s))
    }
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> Result<(), StunError> {
        self.add(&Attribute::ErrorCode { code, reason })
    }
    /// UNKNOWN-ATTRIBUTES from a list of types.
    pub fn add_unknown_attributes(&mut self, types: &[u16]) -> Result<(), StunError> {
        let vlen = types.len() * 2;
        self.check_room(vlen)?;
        self.buf
            .extend_from_slice(&attr_type::UNKNOWN_ATTRIBUTES.to_be_bytes());
        self.buf.extend_from_slice(&(vlen as u16).to_be_bytes());
        for t in types {
            self.buf.extend_from_slice(&t.to_be_bytes());
        }
        self.buf.resize(self.buf.len() + pad4(vlen) - vlen, 0);
        let body = self.body_len();
        self.set_len(body);
        Ok(())
    }
    pub fn add_unknown_attributes_raw(&mut self, l: U16List<'_>) -> Result<(), StunError> {
        self.add(&Attribute::UnknownAttributes(l))
    }
    pub fn add_lifetime(&mut self, secs: u32) -> Result<(), StunError> {
        self.add(&Attribute::Lifetime(secs))
    }
    pub fn add_data(&mut self, d: &[u8]) -> Result<(), StunError> {
        self.add(&Attribute::Data(d))
    }
    pub fn add_channel_number(&mut self, c: u16) -> Result<(), StunError> {
        self.add(&Attribute::ChannelNumber(c))
    }
    pub fn add_requested_transport(&mut self, proto: u8) -> Result<(), StunError> {
        self.add(&Attribute::RequestedTransport(proto))
    }
    pub fn add_dont_fragment(&mut self) -> Result<(), StunError> {
        self.add(&Attribute::DontFragment)
    }
    pub fn add_reservation_token(&mut self, t: [u8; 8]) -> Result<(), StunError> {
        self.add(&Attribute::ReservationToken(t))
    }
    /// PASSWORD-ALGORITHMS from (algorithm, parameters) pairs.
    pub fn add_password_algorithms(&mut self, algs: &[(u16, &[u8])]) -> Result<(), StunError> {
        let vlen: usize = algs.iter().map(|(_, p)| 4 + pad4(p.len())).sum();
        self.check_room(vlen)?;
        self.buf
            .extend_from_slice(&attr_type::PASSWORD_ALGORITHMS.to_be_bytes());
        self.buf.extend_from_slice(&(vlen as u16).to_be_bytes());
        for (a, p) in algs {
            self.buf.extend_from_slice(&a.to_be_bytes());
            self.buf.extend_from_slice(&(p.len() as u16).to_be_bytes());
            self.buf.extend_from_slice(p);
            self.buf.resize(self.buf.len() + pad4(p.len()) - p.len(), 0);
        }
        let body = self.body_len();
        self.set_len(body);
        Ok(())
    }

    /// Append MESSAGE-INTEGRITY (HMAC-SHA1 over everything so far, length adjusted).
    pub fn add_message_integrity(&mut self, key: &[u8]) -> Result<(), StunError> {
        self.check_room(20)?;
        let len = (self.body_len() + 24) as u16;
        let mac = hmac_sha1_parts(
            key,
            &self.buf[self.start..],
            len,
            &self.buf[self.start + HEADER_LEN..],
        )?;
        self.add(&Attribute::MessageIntegrity(&mac))
    }

    /// Append MESSAGE-INTEGRITY-SHA256 (full 32 bytes).
    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), StunError> {
        self.check_room(32)?;
        let len = (self.body_len() + 36) as u16;
        let mac = hmac_sha256_parts(
            key,
            &self.buf[self.start..],
            len,
            &self.buf[self.start + HEADER_LEN..],
        )?;
        self.add(&Attribute::MessageIntegritySha256(&mac))
    }

    /// Append FINGERPRINT (must be last).
    pub fn add_fingerprint(&mut self) -> Result<(), StunError> {
        self.check_room(4)?;
        let len = (self.body_len() + 8) as u16;
        let fp = fingerprint_parts(
            &self.buf[self.start..],
            len,
            &self.buf[self.start + HEADER_LEN..],
        );
        self.add(&Attribute::Fingerprint(fp))
    }
}
