//! Long-term credential keys, HMAC helpers and FINGERPRINT.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

use crate::{StunError, FINGERPRINT_XOR};

/// PASSWORD-ALGORITHM value for MD5 (RFC 8489 §18.5).
pub const PASSWORD_ALGORITHM_MD5: u16 = 0x0001;
/// PASSWORD-ALGORITHM value for SHA-256.
pub const PASSWORD_ALGORITHM_SHA256: u16 = 0x0002;

/// Long-term key `MD5(username ":" realm ":" password)` (RFC 8489 §9.2.2). Inputs are used as given
/// (no SASLprep/OpaqueString processing).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// Long-term key with the SHA-256 password algorithm.
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// CRC-32 of `data` XOR 0x5354554e.
pub fn fingerprint(data: &[u8]) -> u32 {
    crc32fast::hash(data) ^ FINGERPRINT_XOR
}

/// Fingerprint over a header whose length field is replaced by `len`, followed by `body`.
pub(crate) fn fingerprint_parts(header: &[u8], len: u16, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..2]);
    h.update(&len.to_be_bytes());
    h.update(&header[4..20]);
    h.update(body);
    h.finalize() ^ FINGERPRINT_XOR
}

/// HMAC over a STUN message whose header length field is replaced by `len` (the length the message has up to and
/// including the integrity attribute being computed), as RFC 8489 §14.5/§14.6 prescribe.
fn hmac_parts<M: Mac + hmac::digest::KeyInit>(
    key: &[u8],
    header: &[u8],
    len: u16,
    body: &[u8],
) -> Result<hmac::digest::Output<M>, StunError> {
    let mut mac = <M as Mac>::new_from_slice(key).map_err(|_| StunError::IntegrityMismatch)?;
    mac.update(&header[..2]);
    mac.update(&len.to_be_bytes());
    mac.update(&header[4..20]);
    mac.update(body);
    Ok(mac.finalize().into_bytes())
}

pub(crate) fn hmac_sha1_parts(
    key: &[u8],
    header: &[u8],
    len: u16,
    body: &[u8],
) -> Result<[u8; 20], StunError> {
    Ok(hmac_parts::<Hmac<Sha1>>(key, header, len, body)?.into())
}

pub(crate) fn hmac_sha256_parts(
    key: &[u8],
    header: &[u8],
    len: u16,
    body: &[u8],
) -> Result<[u8; 32], StunError> {
    Ok(hmac_parts::<Hmac<Sha256>>(key, header, len, body)?.into())
}

/// Constant-time-ish comparison (length leak only).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
