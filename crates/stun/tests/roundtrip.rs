//! Property tests: encode/parse round-trips and robustness against garbage.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use stun::{
    long_term_key, long_term_key_sha256, stream_frame_len, AddressFamily, Attribute, ChannelData,
    Class, Message, MessageType, MessageWriter, Method, PasswordAlgorithms, TransactionId, U16List,
};

/// Owned description of an attribute, turned into a borrowed [`Attribute`] for encoding.
#[derive(Debug, Clone)]
enum Owned {
    Addr(u8, SocketAddr),
    Text(u8, String),
    Error(u16, String),
    Unknown(Vec<u16>),
    Lifetime(u32),
    Data(Vec<u8>),
    Channel(u16),
    Transport(u8),
    DontFragment,
    EvenPort(bool),
    Token([u8; 8]),
    Family(bool, bool),
    Algorithms(Vec<(u16, Vec<u8>)>),
    Algorithm(u16, Vec<u8>),
    Other(u16, Vec<u8>),
}

fn sockaddr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p)),
    ]
}

fn owned() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (0u8..4, sockaddr()).prop_map(|(k, a)| Owned::Addr(k, a)),
        (0u8..4, "\\PC{0,40}").prop_map(|(k, s)| Owned::Text(k, s)),
        (300u16..700, "[a-zA-Z ]{0,30}").prop_map(|(c, s)| Owned::Error(c, s)),
        proptest::collection::vec(any::<u16>(), 0..6).prop_map(Owned::Unknown),
        any::<u32>().prop_map(Owned::Lifetime),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Owned::Data),
        (0x4000u16..=0x4FFF).prop_map(Owned::Channel),
        any::<u8>().prop_map(Owned::Transport),
        Just(Owned::DontFragment),
        any::<bool>().prop_map(Owned::EvenPort),
        any::<[u8; 8]>().prop_map(Owned::Token),
        (any::<bool>(), any::<bool>()).prop_map(|(a, b)| Owned::Family(a, b)),
        proptest::collection::vec(
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..7)),
            0..4
        )
        .prop_map(Owned::Algorithms),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..9))
            .prop_map(|(a, p)| Owned::Algorithm(a, p)),
        // Types the codec does not decode (avoid the MI/FP types, which change which attributes count).
        (
            0x0030u16..0x7000,
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(t, v)| Owned::Other(t, v)),
    ]
}

fn encode_algs(algs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (a, p) in algs {
        out.extend_from_slice(&a.to_be_bytes());
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
        out.resize(out.len() + (4 - p.len() % 4) % 4, 0);
    }
    out
}

fn with_attr<R>(o: &Owned, scratch: &mut Vec<u8>, f: impl FnOnce(Attribute<'_>) -> R) -> R {
    let fam = |v6: bool| {
        if v6 {
            AddressFamily::V6
        } else {
            AddressFamily::V4
        }
    };
    match o {
        Owned::Addr(k, a) => f(match k {
            0 => Attribute::MappedAddress(*a),
            1 => Attribute::XorMappedAddress(*a),
            2 => Attribute::XorPeerAddress(*a),
            _ => Attribute::XorRelayedAddress(*a),
        }),
        Owned::Text(k, s) => f(match k {
            0 => Attribute::Username(s),
            1 => Attribute::Realm(s),
            2 => Attribute::Nonce(s),
            _ => Attribute::Software(s),
        }),
        Owned::Error(code, reason) => f(Attribute::ErrorCode {
            code: *code,
            reason,
        }),
        Owned::Unknown(types) => {
            scratch.clear();
            for t in types {
                scratch.extend_from_slice(&t.to_be_bytes());
            }
            f(Attribute::UnknownAttributes(
                U16List::from_raw(scratch).expect("even"),
            ))
        }
        Owned::Lifetime(v) => f(Attribute::Lifetime(*v)),
        Owned::Data(d) => f(Attribute::Data(d)),
        Owned::Channel(c) => f(Attribute::ChannelNumber(*c)),
        Owned::Transport(p) => f(Attribute::RequestedTransport(*p)),
        Owned::DontFragment => f(Attribute::DontFragment),
        Owned::EvenPort(r) => f(Attribute::EvenPort(*r)),
        Owned::Token(t) => f(Attribute::ReservationToken(*t)),
        Owned::Family(additional, v6) => f(if *additional {
            Attribute::AdditionalAddressFamily(fam(*v6))
        } else {
            Attribute::RequestedAddressFamily(fam(*v6))
        }),
        Owned::Algorithms(algs) => {
            *scratch = encode_algs(algs);
            f(Attribute::PasswordAlgorithms(
                PasswordAlgorithms::from_raw(scratch).expect("valid"),
            ))
        }
        Owned::Algorithm(algorithm, params) => f(Attribute::PasswordAlgorithm {
            algorithm: *algorithm,
            params,
        }),
        Owned::Other(typ, value) => f(Attribute::Other { typ: *typ, value }),
    }
}

proptest! {
    #[test]
    fn message_roundtrip(
        method in 0u16..0x1000,
        class in 0u8..4,
        tid in any::<[u8; 12]>(),
        attrs in proptest::collection::vec(owned(), 0..8),
        integrity in any::<bool>(),
        sha256 in any::<bool>(),
        fp in any::<bool>(),
    ) {
        let class = [Class::Request, Class::Indication, Class::Success, Class::Error][class as usize];
        let typ = MessageType::new(Method(method), class);
        let key = long_term_key("user", "realm", "pass");
        let key256 = long_term_key_sha256("user", "realm", "pass");
        let mut buf = vec![0xAA; 3]; // the writer appends after existing content
        let mut scratch = Vec::new();
        {
            let mut w = MessageWriter::new(&mut buf, typ, TransactionId(tid));
            for a in &attrs {
                with_attr(a, &mut scratch, |attr| w.add(&attr)).expect("add");
            }
            if integrity { w.add_message_integrity(&key).expect("mi"); }
            if sha256 { w.add_message_integrity_sha256(&key256).expect("mi256"); }
            if fp { w.add_fingerprint().expect("fp"); }
        }
        let m = Message::parse(&buf[3..]).expect("parse");
        prop_assert_eq!(m.message_type(), typ);
        prop_assert_eq!(m.transaction_id(), TransactionId(tid));
        prop_assert_eq!(m.len(), buf.len() - 3);
        let decoded: Vec<_> = m.attributes().map(|a| m.decode(&a).expect("decode")).collect();
        prop_assert_eq!(decoded.len(), attrs.len() + integrity as usize + sha256 as usize + fp as usize);
        for (o, d) in attrs.iter().zip(&decoded) {
            with_attr(o, &mut scratch, |attr| assert_eq!(attr, *d));
        }
        if integrity {
            prop_assert!(m.check_integrity(&key).is_ok());
            prop_assert!(m.check_integrity(b"other").is_err());
        }
        if sha256 {
            prop_assert!(m.check_integrity_sha256(&key256).is_ok());
            prop_assert!(m.check_integrity_sha256(&key).is_err());
        }
        prop_assert_eq!(m.check_fingerprint().is_ok(), fp);
        prop_assert_eq!(stream_frame_len(&buf[3..]).expect("frame"), Some(buf.len() - 3));
    }

    #[test]
    fn type_roundtrip(method in 0u16..0x1000, class in 0u8..4) {
        let class = [Class::Request, Class::Indication, Class::Success, Class::Error][class as usize];
        let t = MessageType::new(Method(method), class);
        prop_assert_eq!(MessageType::from_u16(t.to_u16()), t);
        prop_assert_eq!(t.to_u16() & 0xC000, 0);
    }

    #[test]
    fn channel_data_roundtrip(ch in 0x4000u16..=0x4FFF, data in proptest::collection::vec(any::<u8>(), 0..600), pad in any::<bool>()) {
        let mut buf = Vec::new();
        ChannelData::encode(&mut buf, ch, &data, pad).expect("encode");
        if pad { prop_assert_eq!(buf.len() % 4, 0); }
        let cd = ChannelData::parse(&buf).expect("parse");
        prop_assert_eq!(cd.channel, ch);
        prop_assert_eq!(cd.data, &data[..]);
        prop_assert_eq!(stream_frame_len(&buf).expect("frame"), Some(4 + data.len().div_ceil(4) * 4));
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(m) = Message::parse(&data) {
            for a in m.attributes() { let _ = m.decode(&a); }
            let _ = m.check_integrity(b"k");
            let _ = m.check_integrity_sha256(b"k");
            let _ = m.check_fingerprint();
            let _ = m.xor_peer_addresses().count();
        }
        let _ = ChannelData::parse(&data);
        let _ = stream_frame_len(&data);
    }

    /// Garbage after a valid STUN header (so the attribute walker really runs).
    #[test]
    fn garbage_attributes_never_panic(tid in any::<[u8; 12]>(), body in proptest::collection::vec(any::<u8>(), 0..100)) {
        let mut buf = Vec::new();
        MessageWriter::new(&mut buf, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId(tid));
        let len = body.len() & !3;
        buf.extend_from_slice(&body[..len]);
        buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        if let Ok(m) = Message::parse(&buf) {
            for a in m.attributes() { let _ = m.decode(&a); }
            let _ = m.check_integrity(b"k");
            let _ = m.check_fingerprint();
        }
    }

    /// Every strict prefix of a valid message is rejected without panicking.
    #[test]
    fn truncated_is_rejected(attrs in proptest::collection::vec(owned(), 1..5), tid in any::<[u8; 12]>()) {
        let mut buf = Vec::new();
        let mut scratch = Vec::new();
        {
            let mut w = MessageWriter::new(&mut buf, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId(tid));
            for a in &attrs {
                with_attr(a, &mut scratch, |attr| w.add(&attr)).expect("add");
            }
            w.add_fingerprint().expect("fp");
        }
        for n in 0..buf.len() {
            prop_assert!(Message::parse(&buf[..n]).is_err());
        }
    }
}

#[test]
fn rejects_non_stun() {
    let mut buf = Vec::new();
    MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId([1; 12]),
    );
    assert!(Message::parse(&buf).is_ok());
    let mut bad = buf.clone();
    bad[4] ^= 0xFF; // cookie
    assert!(Message::parse(&bad).is_err());
    let mut bad = buf.clone();
    bad[0] |= 0x80; // top bits
    assert!(Message::parse(&bad).is_err());
    let mut bad = buf.clone();
    bad[3] = 2; // length not multiple of 4
    assert!(Message::parse(&bad).is_err());
    // An attribute whose length runs past the end.
    let mut bad = buf.clone();
    bad.extend_from_slice(&[0x00, 0x06, 0x00, 0x10, b'a', b'b', b'c', b'd']);
    bad[2..4].copy_from_slice(&8u16.to_be_bytes());
    assert!(Message::parse(&bad).is_err());
    assert!(ChannelData::parse(&[0x80, 0, 0, 0]).is_err());
    assert!(ChannelData::parse(&[0x3F, 0xFF, 0, 0]).is_err());
    assert!(ChannelData::parse(&[0x7F, 0xFF, 0, 0]).is_ok()); // RFC 5766 range still accepted
    assert!(ChannelData::parse(&[0x40, 0, 0, 5, 1, 2]).is_err());
}

#[test]
fn too_large_is_refused() {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::SEND, Class::Indication),
        TransactionId([0; 12]),
    );
    let big = vec![0u8; 70_000];
    assert!(w.add_data(&big).is_err());
    w.add_data(&big[..65_000]).expect("fits");
    assert!(w.add_data(&big[..1000]).is_err());
    assert!(Message::parse(w.finish()).is_ok());
}

#[test]
fn attributes_after_integrity_are_ignored() {
    let key = long_term_key("u", "r", "p");
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([2; 12]),
    );
    w.add_username("u").expect("u");
    w.add_message_integrity(&key).expect("mi");
    w.add_lifetime(5).expect("lt");
    w.add_fingerprint().expect("fp");
    let m = Message::parse(w.finish()).expect("parse");
    assert_eq!(m.lifetime().expect("lt"), None);
    assert_eq!(m.attributes().count(), 4);
    m.check_integrity(&key).expect("mi");
    m.check_fingerprint().expect("fp");
}

#[test]
fn long_term_keys() {
    // MD5("user:realm:pass")
    assert_eq!(
        long_term_key("user", "realm", "pass"),
        [
            0x84, 0x93, 0xfb, 0xc5, 0x3b, 0xa5, 0x82, 0xfb, 0x4c, 0x04, 0x4c, 0x45, 0x6b, 0xdc,
            0x40, 0xeb
        ]
    );
    let hex: String = long_term_key_sha256("user", "realm", "pass")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        hex,
        "07e934117abd40836e7c6329b54731b2b2d2a5f9a71f544922d75e0730d8251b"
    );
}
