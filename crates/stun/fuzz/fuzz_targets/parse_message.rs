#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = stun::Message::parse(data) {
        for a in m.attributes() {
            let _ = m.decode(&a);
        }
        let _ = m.check_integrity(b"key");
        let _ = m.check_integrity_sha256(b"key");
        let _ = m.check_fingerprint();
        let _ = m.xor_peer_addresses().count();
        let _ = m.unknown_comprehension_required(&[]).count();
        // Re-encoding the decoded attributes must produce a parseable message.
        let mut out = Vec::new();
        let mut w = stun::MessageWriter::new(&mut out, m.message_type(), m.transaction_id());
        for a in m.attributes() {
            if let Ok(attr) = m.decode(&a) {
                let _ = w.add(&attr);
            }
        }
        assert!(stun::Message::parse(w.finish()).is_ok());
    }
    let _ = stun::ChannelData::parse(data);
    let _ = stun::stream_frame_len(data);
});
