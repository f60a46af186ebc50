//! Attribute types and typed decoding/encoding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{StunError, TransactionId, MAGIC_COOKIE};

/// Attribute type codes (RFC 8489 §18.3, RFC 8656 §18, RFC 8489 §14).
pub mod attr_type {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const ICMP: u16 = 0x8004;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
}

/// Comprehension-required attributes have a type below 0x8000.
pub fn is_comprehension_required(typ: u16) -> bool {
    typ < 0x8000
}

/// Address family as used by REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY and address attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    V4,
    V6,
}

impl AddressFamily {
    pub fn to_u8(self) -> u8 {
        match self {
            AddressFamily::V4 => 0x01,
            AddressFamily::V6 => 0x02,
        }
    }
    pub fn from_u8(v: u8) -> Result<Self, StunError> {
        match v {
            0x01 => Ok(AddressFamily::V4),
            0x02 => Ok(AddressFamily::V6),
            other => Err(StunError::BadFamily(other)),
        }
    }
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddressFamily::V4,
            IpAddr::V6(_) => AddressFamily::V6,
        }
    }
}

/// A list of big-endian u16 values borrowed from the wire (UNKNOWN-ATTRIBUTES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct U16List<'a>(&'a [u8]);

impl<'a> U16List<'a> {
    /// Wrap raw bytes; the length must be even.
    pub fn from_raw(raw: &'a [u8]) -> Option<Self> {
        (raw.len() & 1 == 0).then_some(U16List(raw))
    }
    pub fn raw(&self) -> &'a [u8] {
        self.0
    }
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        self.0
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }
}

/// PASSWORD-ALGORITHMS list borrowed from the wire: entries of (algorithm, parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordAlgorithms<'a>(&'a [u8]);

impl<'a> PasswordAlgorithms<'a> {
    /// Validate and wrap a raw PASSWORD-ALGORITHMS value.
    pub fn from_raw(raw: &'a [u8]) -> Option<Self> {
        let mut rest = raw;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return None;
            }
            let plen = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let total = 4 + pad4(plen);
            if rest.len() < total {
                return None;
            }
            rest = &rest[total..];
        }
        Some(PasswordAlgorithms(raw))
    }
    pub fn raw(&self) -> &'a [u8] {
        self.0
    }
    pub fn iter(&self) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            if rest.len() < 4 {
                return None;
            }
            let alg = u16::from_be_bytes([rest[0], rest[1]]);
            let plen = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let params = rest.get(4..4 + plen)?;
            rest = rest.get(4 + pad4(plen)..).unwrap_or(&[]);
            Some((alg, params))
        })
    }
}

pub(crate) fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// A decoded attribute, borrowing strings and byte values from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute<'a> {
    MappedAddress(SocketAddr),
    XorMappedAddress(SocketAddr),
    XorPeerAddress(SocketAddr),
    XorRelayedAddress(SocketAddr),
    Username(&'a str),
    Realm(&'a str),
    Nonce(&'a str),
    Software(&'a str),
    ErrorCode {
        code: u16,
        reason: &'a str,
    },
    UnknownAttributes(U16List<'a>),
    Lifetime(u32),
    Data(&'a [u8]),
    ChannelNumber(u16),
    RequestedTransport(u8),
    DontFragment,
    EvenPort(bool),
    ReservationToken([u8; 8]),
    RequestedAddressFamily(AddressFamily),
    AdditionalAddressFamily(AddressFamily),
    MessageIntegrity(&'a [u8]),
    MessageIntegritySha256(&'a [u8]),
    PasswordAlgorithms(PasswordAlgorithms<'a>),
    PasswordAlgorithm {
        algorithm: u16,
        params: &'a [u8],
    },
    Fingerprint(u32),
    /// Any attribute not decoded above, kept raw.
    Other {
        typ: u16,
        value: &'a [u8],
    },
}

impl<'a> Attribute<'a> {
    /// The attribute type code.
    pub fn typ(&self) -> u16 {
        use attr_type::*;
        match self {
            Attribute::MappedAddress(_) => MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => XOR_MAPPED_ADDRESS,
            Attribute::XorPeerAddress(_) => XOR_PEER_ADDRESS,
            Attribute::XorRelayedAddress(_) => XOR_RELAYED_ADDRESS,
            Attribute::Username(_) => USERNAME,
            Attribute::Realm(_) => REALM,
            Attribute::Nonce(_) => NONCE,
            Attribute::Software(_) => SOFTWARE,
            Attribute::ErrorCode { .. } => ERROR_CODE,
            Attribute::UnknownAttributes(_) => UNKNOWN_ATTRIBUTES,
            Attribute::Lifetime(_) => LIFETIME,
            Attribute::Data(_) => DATA,
            Attribute::ChannelNumber(_) => CHANNEL_NUMBER,
            Attribute::RequestedTransport(_) => REQUESTED_TRANSPORT,
            Attribute::DontFragment => DONT_FRAGMENT,
            Attribute::EvenPort(_) => EVEN_PORT,
            Attribute::ReservationToken(_) => RESERVATION_TOKEN,
            Attribute::RequestedAddressFamily(_) => REQUESTED_ADDRESS_FAMILY,
            Attribute::AdditionalAddressFamily(_) => ADDITIONAL_ADDRESS_FAMILY,
            Attribute::MessageIntegrity(_) => MESSAGE_INTEGRITY,
            Attribute::MessageIntegritySha256(_) => MESSAGE_INTEGRITY_SHA256,
            Attribute::PasswordAlgorithms(_) => PASSWORD_ALGORITHMS,
            Attribute::PasswordAlgorithm { .. } => PASSWORD_ALGORITHM,
            Attribute::Fingerprint(_) => FINGERPRINT,
            Attribute::Other { typ, .. } => *typ,
        }
    }

    /// Decode an attribute value. `tid` is needed for the XOR-ed address attributes.
    pub fn decode(typ: u16, v: &'a [u8], tid: &TransactionId) -> Result<Attribute<'a>, StunError> {
        use attr_type::*;
        let bad = || StunError::MalformedAttribute(typ);
        let text = |v: &'a [u8]| std::str::from_utf8(v).map_err(|_| StunError::InvalidUtf8(typ));
        let u32v = |v: &[u8]| -> Result<u32, StunError> {
            let a: [u8; 4] = v.try_into().map_err(|_| bad())?;
            Ok(u32::from_be_bytes(a))
        };
        Ok(match typ {
            MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(typ, v, None)?),
            XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(decode_address(typ, v, Some(tid))?),
            XOR_PEER_ADDRESS => Attribute::XorPeerAddress(decode_address(typ, v, Some(tid))?),
            XOR_RELAYED_ADDRESS => Attribute::XorRelayedAddress(decode_address(typ, v, Some(tid))?),
            USERNAME => Attribute::Username(text(v)?),
            REALM => Attribute::Realm(text(v)?),
            NONCE => Attribute::Nonce(text(v)?),
            SOFTWARE => Attribute::Software(text(v)?),
            ERROR_CODE => {
                if v.len() < 4 {
                    return Err(bad());
                }
                let class = u16::from(v[2] & 0x07);
                let number = u16::from(v[3]);
                if !(3..=6).contains(&class) || number > 99 {
                    return Err(bad());
                }
                Attribute::ErrorCode {
                    code: class * 100 + number,
                    reason: text(&v[4..])?,
                }
            }
            UNKNOWN_ATTRIBUTES => {
                Attribute::UnknownAttributes(U16List::from_raw(v).ok_or_else(bad)?)
            }
            LIFETIME => Attribute::Lifetime(u32v(v)?),
            DATA => Attribute::Data(v),
            CHANNEL_NUMBER => Attribute::ChannelNumber((u32v(v)? >> 16) as u16),
            REQUESTED_TRANSPORT => Attribute::RequestedTransport((u32v(v)? >> 24) as u8),
            DONT_FRAGMENT => {
                if !v.is_empty() {
                    return Err(bad());
                }
                Attribute::DontFragment
            }
            EVEN_PORT => {
                if v.len() != 1 {
                    return Err(bad());
                }
                Attribute::EvenPort(v[0] & 0x80 != 0)
            }
            RESERVATION_TOKEN => Attribute::ReservationToken(v.try_into().map_err(|_| bad())?),
            REQUESTED_ADDRESS_FAMILY | ADDITIONAL_ADDRESS_FAMILY => {
                if v.len() != 4 {
                    return Err(bad());
                }
                let fam = AddressFamily::from_u8(v[0])?;
                if typ == REQUESTED_ADDRESS_FAMILY {
                    Attribute::RequestedAddressFamily(fam)
                } else {
                    Attribute::AdditionalAddressFamily(fam)
                }
            }
            MESSAGE_INTEGRITY => {
                if v.len() != 20 {
                    return Err(bad());
                }
                Attribute::MessageIntegrity(v)
            }
            MESSAGE_INTEGRITY_SHA256 => {
                if v.len() < 16 || v.len() > 32 || v.len() & 3 != 0 {
                    return Err(bad());
                }
                Attribute::MessageIntegritySha256(v)
            }
            PASSWORD_ALGORITHMS => {
                Attribute::PasswordAlgorithms(PasswordAlgorithms::from_raw(v).ok_or_else(bad)?)
            }
            PASSWORD_ALGORITHM => {
                if v.len() < 4 {
                    return Err(bad());
                }
                let algorithm = u16::from_be_bytes([v[0], v[1]]);
                let plen = usize::from(u16::from_be_bytes([v[2], v[3]]));
                let params = v.get(4..4 + plen).ok_or_else(bad)?;
                Attribute::PasswordAlgorithm { algorithm, params }
            }
            FINGERPRINT => Attribute::Fingerprint(u32v(v)?),
            _ => Attribute::Other { typ, value: v },
        })
    }

    /// Length of the encoded value (without header or padding).
    pub(crate) fn value_len(&self) -> usize {
        match self {
            Attribute::MappedAddress(a)
            | Attribute::XorMappedAddress(a)
            | Attribute::XorPeerAddress(a)
            | Attribute::XorRelayedAddress(a) => match a {
                SocketAddr::V4(_) => 8,
                SocketAddr::V6(_) => 20,
            },
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Nonce(s)
            | Attribute::Software(s) => s.len(),
            Attribute::ErrorCode { reason, .. } => 4 + reason.len(),
            Attribute::UnknownAttributes(l) => l.raw().len(),
            Attribute::Lifetime(_)
            | Attribute::ChannelNumber(_)
            | Attribute::RequestedTransport(_)
            | Attribute::RequestedAddressFamily(_)
            | Attribute::AdditionalAddressFamily(_)
            | Attribute::Fingerprint(_) => 4,
            Attribute::Data(d) => d.len(),
            Attribute::DontFragment => 0,
            Attribute::EvenPort(_) => 1,
            Attribute::ReservationToken(_) => 8,
            Attribute::MessageIntegrity(v) | Attribute::MessageIntegritySha256(v) => v.len(),
            Attribute::PasswordAlgorithms(l) => l.raw().len(),
            Attribute::PasswordAlgorithm { params, .. } => 4 + pad4(params.len()),
            Attribute::Other { value, .. } => value.len(),
        }
    }

    /// Append the encoded value (no header, no padding) to `out`.
    pub(crate) fn encode_value(&self, out: &mut Vec<u8>, tid: &TransactionId) {
        match self {
            Attribute::MappedAddress(a) => encode_address(out, *a, None),
            Attribute::XorMappedAddress(a)
            | Attribute::XorPeerAddress(a)
            | Attribute::XorRelayedAddress(a) => encode_address(out, *a, Some(tid)),
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Nonce(s)
            | Attribute::Software(s) => out.extend_from_slice(s.as_bytes()),
            Attribute::ErrorCode { code, reason } => {
                out.extend_from_slice(&[0, 0, ((code / 100) & 0x07) as u8, (code % 100) as u8]);
                out.extend_from_slice(reason.as_bytes());
            }
            Attribute::UnknownAttributes(l) => out.extend_from_slice(l.raw()),
            Attribute::Lifetime(v) | Attribute::Fingerprint(v) => {
                out.extend_from_slice(&v.to_be_bytes())
            }
            Attribute::Data(d) => out.extend_from_slice(d),
            Attribute::ChannelNumber(c) => {
                out.extend_from_slice(&c.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Attribute::RequestedTransport(p) => out.extend_from_slice(&[*p, 0, 0, 0]),
            Attribute::DontFragment => {}
            Attribute::EvenPort(r) => out.push(if *r { 0x80 } else { 0 }),
            Attribute::ReservationToken(t) => out.extend_from_slice(t),
            Attribute::RequestedAddressFamily(f) | Attribute::AdditionalAddressFamily(f) => {
                out.extend_from_slice(&[f.to_u8(), 0, 0, 0])
            }
            Attribute::MessageIntegrity(v) | Attribute::MessageIntegritySha256(v) => {
                out.extend_from_slice(v)
            }
            Attribute::PasswordAlgorithms(l) => out.extend_from_slice(l.raw()),
            Attribute::PasswordAlgorithm { algorithm, params } => {
                out.extend_from_slice(&algorithm.to_be_bytes());
                out.extend_from_slice(&(params.len() as u16).to_be_bytes());
                out.extend_from_slice(params);
                out.resize(out.len() + pad4(params.len()) - params.len(), 0);
            }
            Attribute::Other { value, .. } => out.extend_from_slice(value),
        }
    }
}

fn decode_address(
    typ: u16,
    v: &[u8],
    xor: Option<&TransactionId>,
) -> Result<SocketAddr, StunError> {
    if v.len() < 4 {
        return Err(StunError::MalformedAttribute(typ));
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match AddressFamily::from_u8(v[1])? {
        AddressFamily::V4 => {
            let mut a: [u8; 4] = v[4..]
                .try_into()
                .map_err(|_| StunError::MalformedAttribute(typ))?;
            if xor.is_some() {
                for (b, k) in a.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
        }
        AddressFamily::V6 => {
            let mut a: [u8; 16] = v[4..]
                .try_into()
                .map_err(|_| StunError::MalformedAttribute(typ))?;
            if let Some(tid) = xor {
                let key = cookie.iter().chain(tid.0.iter());
                for (b, k) in a.iter_mut().zip(key) {
                    *b ^= k;
                }
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
    }
}

fn encode_address(out: &mut Vec<u8>, addr: SocketAddr, xor: Option<&TransactionId>) {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = addr.port();
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    out.push(0);
    out.push(AddressFamily::of(&addr.ip()).to_u8());
    out.extend_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            let mut a = ip.octets();
            if xor.is_some() {
                for (b, k) in a.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            out.extend_from_slice(&a);
        }
        IpAddr::V6(ip) => {
            let mut a = ip.octets();
            if let Some(tid) = xor {
                for (b, k) in a.iter_mut().zip(cookie.iter().chain(tid.0.iter())) {
                    *b ^= k;
                }
            }
            out.extend_from_slice(&a);
        }
    }
}
