//! Sans-IO STUN/TURN message codec (RFC 8489, RFC 8656). No I/O, no async.
//!
//! * [`Message::parse`] validates a datagram and returns a zero-copy [`MessageRef`] borrowing the input.
//! * [`MessageWriter`] encodes a message into a caller-provided `Vec<u8>` (reuse it: no allocation once
//!   its capacity is reached), including MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT.
//! * [`ChannelData`] frames TURN ChannelData messages; [`stream_frame_len`] splits a TCP/TLS byte stream.
//! * [`long_term_key`] / [`long_term_key_sha256`] derive long-term credential keys.

mod attr;
mod channel;
mod integrity;
mod message;
mod writer;

pub use attr::{
    attr_type, is_comprehension_required, AddressFamily, Attribute, PasswordAlgorithms, U16List,
};
pub use channel::{stream_frame_len, ChannelData, CHANNEL_MAX, CHANNEL_MAX_ACCEPTED, CHANNEL_MIN};
pub use integrity::{
    fingerprint, long_term_key, long_term_key_sha256, PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
};
pub use message::{AttrIter, Message, MessageRef, RawAttribute};
pub use writer::MessageWriter;

/// The fixed magic cookie of RFC 5389 and later.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;
/// Value XOR-ed into the CRC-32 of FINGERPRINT.
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Codec errors. Parsing never panics; every malformed input maps to one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("input too short")]
    Truncated,
    #[error("not a STUN message")]
    NotStun,
    #[error("message length is not a multiple of 4")]
    BadLength,
    #[error("attribute overruns the message")]
    AttributeOverrun,
    #[error("malformed attribute {0:#06x}")]
    MalformedAttribute(u16),
    #[error("attribute {0:#06x} is not valid UTF-8")]
    InvalidUtf8(u16),
    #[error("missing attribute {0:#06x}")]
    MissingAttribute(u16),
    #[error("message integrity check failed")]
    IntegrityMismatch,
    #[error("fingerprint mismatch")]
    FingerprintMismatch,
    #[error("message would exceed 65535 bytes")]
    TooLarge,
    #[error("invalid channel number {0:#06x}")]
    BadChannel(u16),
    #[error("invalid address family {0:#04x}")]
    BadFamily(u8),
}

/// STUN message class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        }
    }
    fn from_bits(b: u16) -> Class {
        match b & 3 {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// STUN method (12 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
}

/// Method + class, as packed into the 14-bit message type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    pub method: Method,
    pub class: Class,
}

impl MessageType {
    pub const fn new(method: Method, class: Class) -> Self {
        MessageType { method, class }
    }
    /// Encode as the 16-bit wire value (top two bits zero).
    pub fn to_u16(self) -> u16 {
        let m = self.method.0 & 0x0FFF;
        let c = self.class.bits();
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    }
    /// Decode the 16-bit wire value (the top two bits are ignored).
    pub fn from_u16(v: u16) -> Self {
        let method = (v & 0x000F) | ((v >> 1) & 0x0070) | ((v >> 2) & 0x0F80);
        let class = ((v >> 4) & 1) | ((v >> 7) & 2);
        MessageType {
            method: Method(method),
            class: Class::from_bits(class),
        }
    }
}

/// 96-bit transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TransactionId(pub [u8; 12]);
