//! Zero-copy message reader.

use std::net::SocketAddr;

use crate::attr::{attr_type, pad4, AddressFamily, Attribute};
use crate::integrity::{ct_eq, fingerprint_parts, hmac_sha1_parts, hmac_sha256_parts};
use crate::{Class, MessageType, Method, StunError, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// Entry point of the reader.
pub struct Message;

impl Message {
    /// Parse and validate a STUN message. `buf` may be longer than the message (the rest is ignored);
    /// every attribute header is checked to lie within the message, so iteration cannot fail afterwards.
    pub fn parse(buf: &[u8]) -> Result<MessageRef<'_>, StunError> {
        if buf.len() < HEADER_LEN {
            return Err(StunError::Truncated);
        }
        if buf[0] & 0xC0 != 0 {
            return Err(StunError::NotStun);
        }
        if buf[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return Err(StunError::NotStun);
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if len & 3 != 0 {
            return Err(StunError::BadLength);
        }
        let buf = buf.get(..HEADER_LEN + len).ok_or(StunError::Truncated)?;
        let mut off = HEADER_LEN;
        while off < buf.len() {
            let hdr = buf.get(off..off + 4).ok_or(StunError::AttributeOverrun)?;
            let alen = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
            let next = off + 4 + pad4(alen);
            if next > buf.len() {
                return Err(StunError::AttributeOverrun);
            }
            off = next;
        }
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&buf[8..20]);
        Ok(MessageRef {
            buf,
            typ: MessageType::from_u16(u16::from_be_bytes([buf[0], buf[1]])),
            tid: TransactionId(tid),
        })
    }

    /// Cheap check: could `buf` be a STUN message (top bits zero and magic cookie present)?
    pub fn is_stun(buf: &[u8]) -> bool {
        buf.len() >= HEADER_LEN && buf[0] & 0xC0 == 0 && buf[4..8] == MAGIC_COOKIE.to_be_bytes()
    }
}

/// A validated STUN message borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    buf: &'a [u8],
    typ: MessageType,
    tid: TransactionId,
}

/// One attribute as found on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    /// Offset of the attribute header from the start of the message.
    pub offset: usize,
}

/// Iterator over the raw attributes of a message.
#[derive(Debug, Clone)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    off: usize,
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = RawAttribute<'a>;
    fn next(&mut self) -> Option<RawAttribute<'a>> {
        let hdr = self.buf.get(self.off..self.off + 4)?;
        let typ = u16::from_be_bytes([hdr[0], hdr[1]]);
        let alen = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        let value = self.buf.get(self.off + 4..self.off + 4 + alen)?;
        let offset = self.off;
        self.off += 4 + pad4(alen);
        Some(RawAttribute { typ, value, offset })
    }
}

impl<'a> MessageRef<'a> {
    pub fn message_type(&self) -> MessageType {
        self.typ
    }
    pub fn method(&self) -> Method {
        self.typ.method
    }
    pub fn class(&self) -> Class {
        self.typ.class
    }
    pub fn transaction_id(&self) -> TransactionId {
        self.tid
    }
    /// The exact bytes of this message (header + attributes).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        false
    }

    /// All attributes, in wire order, including any after MESSAGE-INTEGRITY.
    pub fn attributes(&self) -> AttrIter<'a> {
        AttrIter {
            buf: self.buf,
            off: HEADER_LEN,
        }
    }

    /// Attributes that count: per RFC 8489 §14.5, after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256
    /// and FINGERPRINT are considered, and nothing after FINGERPRINT.
    pub fn effective_attributes(&self) -> impl Iterator<Item = RawAttribute<'a>> + 'a {
        let mut after_mi = false;
        let mut done = false;
        self.attributes().filter(move |a| {
            if done {
                return false;
            }
            let keep = !after_mi
                || a.typ == attr_type::MESSAGE_INTEGRITY_SHA256
                || a.typ == attr_type::FINGERPRINT;
            if a.typ == attr_type::MESSAGE_INTEGRITY || a.typ == attr_type::MESSAGE_INTEGRITY_SHA256
            {
                after_mi = true;
            }
            if a.typ == attr_type::FINGERPRINT {
                done = true;
            }
            keep
        })
    }

    /// First effective attribute of type `typ`.
    pub fn raw(&self, typ: u16) -> Option<RawAttribute<'a>> {
        self.effective_attributes().find(|a| a.typ == typ)
    }

    /// First effective attribute of type `typ`, decoded.
    pub fn get(&self, typ: u16) -> Result<Option<Attribute<'a>>, StunError> {
        match self.raw(typ) {
            None => Ok(None),
            Some(a) => Attribute::decode(a.typ, a.value, &self.tid).map(Some),
        }
    }

    /// Decode an attribute of this message.
    pub fn decode(&self, a: &RawAttribute<'a>) -> Result<Attribute<'a>, StunError> {
        Attribute::decode(a.typ, a.value, &self.tid)
    }

    /// Comprehension-required attribute types (< 0x8000) that `known` does not contain.
    pub fn unknown_comprehension_required<'k>(
        &self,
        known: &'k [u16],
    ) -> impl Iterator<Item = u16> + 'k
    where
        'a: 'k,
    {
        self.effective_attributes()
            .map(|a| a.typ)
            .filter(move |t| crate::is_comprehension_required(*t) && !known.contains(t))
    }

    fn text(&self, typ: u16) -> Result<Option<&'a str>, StunError> {
        match self.raw(typ) {
            None => Ok(None),
            Some(a) => std::str::from_utf8(a.value)
                .map(Some)
                .map_err(|_| StunError::InvalidUtf8(typ)),
        }
    }
    fn addr(&self, typ: u16) -> Result<Option<SocketAddr>, StunError> {
        Ok(match self.get(typ)? {
            Some(Attribute::MappedAddress(a))
            | Some(Attribute::XorMappedAddress(a))
            | Some(Attribute::XorPeerAddress(a))
            | Some(Attribute::XorRelayedAddress(a)) => Some(a),
            _ => None,
        })
    }

    pub fn username(&self) -> Result<Option<&'a str>, StunError> {
        self.text(attr_type::USERNAME)
    }
    pub fn realm(&self) -> Result<Option<&'a str>, StunError> {
        self.text(attr_type::REALM)
    }
    pub fn nonce(&self) -> Result<Option<&'a str>, StunError> {
        self.text(attr_type::NONCE)
    }
    pub fn software(&self) -> Result<Option<&'a str>, StunError> {
        self.text(attr_type::SOFTWARE)
    }
    pub fn mapped_address(&self) -> Result<Option<SocketAddr>, StunError> {
        self.addr(attr_type::MAPPED_ADDRESS)
    }
    pub fn xor_mapped_address(&self) -> Result<Option<SocketAddr>, StunError> {
        self.addr(attr_type::XOR_MAPPED_ADDRESS)
    }
    pub fn xor_relayed_address(&self) -> Result<Option<SocketAddr>, StunError> {
        self.addr(attr_type::XOR_RELAYED_ADDRESS)
    }
    pub fn xor_peer_address(&self) -> Result<Option<SocketAddr>, StunError> {
        self.addr(attr_type::XOR_PEER_ADDRESS)
    }
    /// Every XOR-RELAYED-ADDRESS (a dual allocation answer carries two, RFC 8656 §7.3).
    pub fn xor_relayed_addresses(
        &self,
    ) -> impl Iterator<Item = Result<SocketAddr, StunError>> + 'a {
        let tid = self.tid;
        self.effective_attributes()
            .filter(|a| a.typ == attr_type::XOR_RELAYED_ADDRESS)
            .map(move |a| match Attribute::decode(a.typ, a.value, &tid)? {
                Attribute::XorRelayedAddress(s) => Ok(s),
                _ => Err(StunError::MalformedAttribute(a.typ)),
            })
    }
    /// Every XOR-PEER-ADDRESS (CreatePermission may carry several).
    pub fn xor_peer_addresses(&self) -> impl Iterator<Item = Result<SocketAddr, StunError>> + 'a {
        let tid = self.tid;
        self.effective_attributes()
            .filter(|a| a.typ == attr_type::XOR_PEER_ADDRESS)
            .map(move |a| match Attribute::decode(a.typ, a.value, &tid)? {
                Attribute::XorPeerAddress(s) => Ok(s),
                _ => Err(StunError::MalformedAttribute(a.typ)),
            })
    }
    pub fn error_code(&self) -> Result<Option<(u16, &'a str)>, StunError> {
        Ok(match self.get(attr_type::ERROR_CODE)? {
            Some(Attribute::ErrorCode { code, reason }) => Some((code, reason)),
            _ => None,
        })
    }
    pub fn lifetime(&self) -> Result<Option<u32>, StunError> {
        Ok(match self.get(attr_type::LIFETIME)? {
            Some(Attribute::Lifetime(v)) => Some(v),
            _ => None,
        })
    }
    pub fn data(&self) -> Option<&'a [u8]> {
        self.raw(attr_type::DATA).map(|a| a.value)
    }
    pub fn channel_number(&self) -> Result<Option<u16>, StunError> {
        Ok(match self.get(attr_type::CHANNEL_NUMBER)? {
            Some(Attribute::ChannelNumber(v)) => Some(v),
            _ => None,
        })
    }
    pub fn requested_transport(&self) -> Result<Option<u8>, StunError> {
        Ok(match self.get(attr_type::REQUESTED_TRANSPORT)? {
            Some(Attribute::RequestedTransport(v)) => Some(v),
            _ => None,
        })
    }
    pub fn requested_address_family(&self) -> Result<Option<AddressFamily>, StunError> {
        Ok(match self.get(attr_type::REQUESTED_ADDRESS_FAMILY)? {
            Some(Attribute::RequestedAddressFamily(v)) => Some(v),
            _ => None,
        })
    }
    pub fn additional_address_family(&self) -> Result<Option<AddressFamily>, StunError> {
        Ok(match self.get(attr_type::ADDITIONAL_ADDRESS_FAMILY)? {
            Some(Attribute::AdditionalAddressFamily(v)) => Some(v),
            _ => None,
        })
    }
    pub fn even_port(&self) -> Result<Option<bool>, StunError> {
        Ok(match self.get(attr_type::EVEN_PORT)? {
            Some(Attribute::EvenPort(v)) => Some(v),
            _ => None,
        })
    }
    pub fn reservation_token(&self) -> Result<Option<[u8; 8]>, StunError> {
        Ok(match self.get(attr_type::RESERVATION_TOKEN)? {
            Some(Attribute::ReservationToken(v)) => Some(v),
            _ => None,
        })
    }
    pub fn dont_fragment(&self) -> bool {
        self.raw(attr_type::DONT_FRAGMENT).is_some()
    }
    pub fn has(&self, typ: u16) -> bool {
        self.raw(typ).is_some()
    }

    /// Verify MESSAGE-INTEGRITY (HMAC-SHA1) with `key` (long-term key or short-term password).
    pub fn check_integrity(&self, key: &[u8]) -> Result<(), StunError> {
        let a = self
            .raw(attr_type::MESSAGE_INTEGRITY)
            .ok_or(StunError::MissingAttribute(attr_type::MESSAGE_INTEGRITY))?;
        if a.value.len() != 20 {
            return Err(StunError::MalformedAttribute(a.typ));
        }
        let len = (a.offset - HEADER_LEN + 4 + 20) as u16;
        let mac = hmac_sha1_parts(key, self.buf, len, &self.buf[HEADER_LEN..a.offset])?;
        if ct_eq(&mac, a.value) {
            Ok(())
        } else {
            Err(StunError::IntegrityMismatch)
        }
    }

    /// Verify MESSAGE-INTEGRITY-SHA256 (possibly truncated to 16..32 bytes).
    pub fn check_integrity_sha256(&self, key: &[u8]) -> Result<(), StunError> {
        let a =
            self.raw(attr_type::MESSAGE_INTEGRITY_SHA256)
                .ok_or(StunError::MissingAttribute(
                    attr_type::MESSAGE_INTEGRITY_SHA256,
                ))?;
        let n = a.value.len();
        if !(16..=32).contains(&n) || n & 3 != 0 {
            return Err(StunError::MalformedAttribute(a.typ));
        }
        let len = (a.offset - HEADER_LEN + 4 + n) as u16;
        let mac = hmac_sha256_parts(key, self.buf, len, &self.buf[HEADER_LEN..a.offset])?;
        if ct_eq(&mac[..n], a.value) {
            Ok(())
        } else {
            Err(StunError::IntegrityMismatch)
        }
    }

    /// Verify FINGERPRINT. Errors with `MissingAttribute` if there is none.
    pub fn check_fingerprint(&self) -> Result<(), StunError> {
        let a = self
            .raw(attr_type::FINGERPRINT)
            .ok_or(StunError::MissingAttribute(attr_type::FINGERPRINT))?;
        let v: [u8; 4] = a
            .value
            .try_into()
            .map_err(|_| StunError::MalformedAttribute(a.typ))?;
        let len = (a.offset - HEADER_LEN + 8) as u16;
        if fingerprint_parts(self.buf, len, &self.buf[HEADER_LEN..a.offset])
            == u32::from_be_bytes(v)
        {
            Ok(())
        } else {
            Err(StunError::FingerprintMismatch)
        }
    }
}
