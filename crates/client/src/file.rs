//! File-transfer framing on the `file` data channel, identical to the browser SDK:
//! a JSON `start` string, binary chunks of 16 KiB, a JSON `end` string; the receiver answers with `ack`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Chunk size of file transfers (as the browser SDK).
pub const FILE_CHUNK: usize = 16 * 1024;

/// Control messages of the `file` channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum FileControl {
    Start {
        id: String,
        name: String,
        size: u64,
        #[serde(default = "default_mime")]
        mime: String,
        sha256: String,
    },
    End {
        id: String,
    },
    Ack {
        id: String,
        #[serde(default)]
        ok: bool,
        #[serde(default)]
        sha256: String,
    },
}

fn default_mime() -> String {
    "application/octet-stream".into()
}

/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file as lowercase hex (blocking; run it in `spawn_blocking`).
///
/// ```
/// let dir = std::env::temp_dir().join(format!("sb-doc-{}", std::process::id()));
/// std::fs::write(&dir, b"abc").unwrap();
/// assert_eq!(
///     client::sha256_file(&dir).unwrap(),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// # std::fs::remove_file(&dir).ok();
/// ```
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// A file received from a participant over the `file` channel.
///
/// ```
/// # fn show(f: &client::ReceivedFile) {
/// println!("{} ({} bytes, sha256 {})", f.name, f.data.len(), if f.checksum_ok { "OK" } else { "MISMATCH" });
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReceivedFile {
    /// Transfer id chosen by the sender.
    pub id: String,
    /// File name as announced by the sender (not sanitized: never use it as a path as is).
    pub name: String,
    /// MIME type as announced.
    pub mime: String,
    /// The bytes.
    pub data: Vec<u8>,
    /// SHA-256 (hex) of `data`.
    pub sha256: String,
    /// SHA-256 (hex) announced by the sender.
    pub expected_sha256: String,
    /// Size announced by the sender.
    pub expected_size: u64,
    /// Whether size and checksum match the announcement.
    pub checksum_ok: bool,
}

/// A transfer being received.
pub(crate) struct Incoming {
    pub id: String,
    pub name: String,
    pub mime: String,
    pub size: u64,
    pub expected: String,
    pub hasher: Sha256,
    pub data: Vec<u8>,
    pub received: u64,
    pub overflow: bool,
}

impl Incoming {
    pub fn new(
        id: String,
        name: String,
        mime: String,
        size: u64,
        expected: String,
        max: u64,
    ) -> Self {
        let overflow = size > max;
        Incoming {
            id,
            name,
            mime,
            size,
            expected: expected.to_ascii_lowercase(),
            hasher: Sha256::new(),
            data: Vec::with_capacity(size.min(64 * 1024 * 1024) as usize),
            received: 0,
            overflow,
        }
    }

    /// Appends a chunk; returns true when a progress report is due (every 256 KiB and at the end).
    pub fn push(&mut self, chunk: &[u8], max: u64) -> bool {
        let before = self.received;
        self.received += chunk.len() as u64;
        if self.received > self.size || self.received > max {
            // More than announced: keep counting, drop the data, fail the checksum.
            self.overflow = true;
            self.data = Vec::new();
        }
        if !self.overflow {
            self.hasher.update(chunk);
            self.data.extend_from_slice(chunk);
        }
        before / 262_144 != self.received / 262_144 || self.received >= self.size
    }

    pub fn finish(self) -> ReceivedFile {
        let sha256 = hex(&self.hasher.finalize());
        let checksum_ok = !self.overflow && self.received == self.size && sha256 == self.expected;
        ReceivedFile {
            id: self.id,
            name: self.name,
            mime: self.mime,
            data: self.data,
            sha256,
            expected_sha256: self.expected,
            expected_size: self.size,
            checksum_ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_matches_the_sdk() {
        let s = serde_json::to_string(&FileControl::Start {
            id: "ab".into(),
            name: "f.bin".into(),
            size: 3,
            mime: "application/octet-stream".into(),
            sha256: "00".into(),
        })
        .unwrap();
        assert_eq!(
            s,
            r#"{"t":"start","id":"ab","name":"f.bin","size":3,"mime":"application/octet-stream","sha256":"00"}"#
        );
        let a: FileControl =
            serde_json::from_str(r#"{"t":"ack","id":"x","ok":true,"sha256":"ff"}"#).unwrap();
        assert_eq!(
            a,
            FileControl::Ack {
                id: "x".into(),
                ok: true,
                sha256: "ff".into()
            }
        );
    }

    #[test]
    fn incoming_verifies() {
        let want = hex(&Sha256::digest(b"hello"));
        let mut rx = Incoming::new("1".into(), "n".into(), "m".into(), 5, want.clone(), 100);
        rx.push(b"hel", 100);
        rx.push(b"lo", 100);
        let f = rx.finish();
        assert!(f.checksum_ok);
        let mut rx = Incoming::new("1".into(), "n".into(), "m".into(), 5, want, 100);
        rx.push(b"hello!", 100);
        assert!(!rx.finish().checksum_ok);
    }
}
