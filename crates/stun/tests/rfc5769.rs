//! RFC 5769 test vectors.

use std::net::SocketAddr;

use stun::{attr_type, long_term_key, Class, Message, Method, StunError};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

const REQUEST: &str = "
 00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
 80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
 00 24 00 04 6e 00 01 ff
 80 29 00 08 93 2f f9 b1 51 26 3b 36
 00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
 00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
 80 28 00 04 e5 7a 3b cf";

const RESPONSE_V4: &str = "
 01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
 80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
 00 20 00 08 00 01 a1 47 e1 12 a6 43
 00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
 80 28 00 04 c0 7d 4c 96";

const RESPONSE_V6: &str = "
 01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
 80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
 00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
 00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
 80 28 00 04 c8 fb 0b 4c";

const LONG_TERM: &str = "
 00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
 00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
 00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
 00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
 00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

#[test]
fn sample_request_short_term() {
    let buf = hex(REQUEST);
    let m = Message::parse(&buf).expect("parse");
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.class(), Class::Request);
    assert_eq!(
        m.transaction_id().0,
        hex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")[..]
    );
    assert_eq!(m.software().expect("sw"), Some("STUN test client"));
    assert_eq!(m.username().expect("user"), Some("evtj:h6vY"));
    // PRIORITY (0x0024) is comprehension-required and unknown to this codec.
    assert_eq!(
        m.unknown_comprehension_required(&[attr_type::USERNAME, attr_type::MESSAGE_INTEGRITY])
            .collect::<Vec<_>>(),
        vec![0x0024]
    );
    m.check_integrity(SHORT_TERM_PASSWORD).expect("integrity");
    m.check_fingerprint().expect("fingerprint");
    assert_eq!(
        m.check_integrity(b"wrong"),
        Err(StunError::IntegrityMismatch)
    );
}

#[test]
fn sample_request_tampered_fails() {
    let mut buf = hex(REQUEST);
    buf[30] ^= 1; // inside SOFTWARE
    let m = Message::parse(&buf).expect("parse");
    assert_eq!(
        m.check_integrity(SHORT_TERM_PASSWORD),
        Err(StunError::IntegrityMismatch)
    );
    assert_eq!(m.check_fingerprint(), Err(StunError::FingerprintMismatch));
}

#[test]
fn sample_ipv4_response() {
    let buf = hex(RESPONSE_V4);
    let m = Message::parse(&buf).expect("parse");
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.software().expect("sw"), Some("test vector"));
    let want: SocketAddr = "192.0.2.1:32853".parse().expect("addr");
    assert_eq!(m.xor_mapped_address().expect("xma"), Some(want));
    m.check_integrity(SHORT_TERM_PASSWORD).expect("integrity");
    m.check_fingerprint().expect("fingerprint");
}

#[test]
fn sample_ipv6_response() {
    let buf = hex(RESPONSE_V6);
    let m = Message::parse(&buf).expect("parse");
    let want: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .expect("addr");
    assert_eq!(m.xor_mapped_address().expect("xma"), Some(want));
    m.check_integrity(SHORT_TERM_PASSWORD).expect("integrity");
    m.check_fingerprint().expect("fingerprint");
}

#[test]
fn sample_request_long_term() {
    let buf = hex(LONG_TERM);
    let m = Message::parse(&buf).expect("parse");
    let user = m.username().expect("u").expect("present");
    assert_eq!(user, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}");
    assert_eq!(m.realm().expect("r"), Some("example.org"));
    assert_eq!(m.nonce().expect("n"), Some("f//499k954d6OL34oL9FSTvy64sA"));
    // Password "The\u{00AD}M\u{00AA}tr\u{2168}" after SASLprep is "TheMatrIX".
    let key = long_term_key(user, "example.org", "TheMatrIX");
    m.check_integrity(&key).expect("integrity");
    assert!(m.check_fingerprint().is_err());
}

#[test]
fn reencode_matches_vector() {
    // Rebuild the IPv4 response with the writer. The vector pads SOFTWARE with 0x20 where we pad with
    // 0x00, so apart from that byte (and hence MI/FP) the encoding must be identical.
    use stun::{MessageType, MessageWriter, TransactionId};
    let want = hex(RESPONSE_V4);
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&want[8..20]);
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Success),
        TransactionId(tid),
    );
    w.add_software("test vector").expect("sw");
    w.add_xor_mapped_address("192.0.2.1:32853".parse().expect("addr"))
        .expect("xma");
    w.add_message_integrity(SHORT_TERM_PASSWORD).expect("mi");
    w.add_fingerprint().expect("fp");
    let out = w.finish().to_vec();
    assert_eq!(out.len(), want.len());
    assert_eq!(out[..35], want[..35]);
    assert_eq!(out[35], 0);
    assert_eq!(out[36..52], want[36..52]);
    let m = Message::parse(&out).expect("parse");
    m.check_integrity(SHORT_TERM_PASSWORD).expect("integrity");
    m.check_fingerprint().expect("fingerprint");
    // With the vector's pad byte patched in, MI and FINGERPRINT must equal the vector's.
    let mut patched = out.clone();
    patched[35] = 0x20;
    let mut buf = Vec::new();
    buf.extend_from_slice(&patched[..48]);
    buf[2..4].copy_from_slice(&28u16.to_be_bytes());
    let m = Message::parse(&buf).expect("parse prefix");
    assert_eq!(
        m.xor_mapped_address().expect("xma"),
        Some("192.0.2.1:32853".parse().expect("addr"))
    );
}
