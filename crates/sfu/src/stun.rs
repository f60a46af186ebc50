//! Just enough STUN parsing to route a datagram: the local ufrag in a Binding request's USERNAME.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;

/// The part of a STUN message's USERNAME before `:` (the ufrag of the agent receiving the request, i.e.
/// ours). `None` for anything that is not a well-formed STUN message with a USERNAME. Never allocates.
pub fn stun_local_ufrag(b: &[u8]) -> Option<&str> {
    if b.len() < 20 || b[0] & 0xC0 != 0 || b[4..8] != MAGIC_COOKIE {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let end = 20usize.checked_add(len)?.min(b.len());
    let mut i = 20;
    while i + 4 <= end {
        let t = u16::from_be_bytes([b[i], b[i + 1]]);
        let l = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        let v = b.get(i + 4..i + 4 + l)?;
        if t == ATTR_USERNAME {
            let s = std::str::from_utf8(v).ok()?;
            return s.split(':').next().filter(|u| !u.is_empty());
        }
        i += 4 + ((l + 3) & !3);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(username: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        // PRIORITY first, to make the parser skip an attribute.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn finds_local_ufrag() {
        assert_eq!(stun_local_ufrag(&binding(b"srv1:cli2")), Some("srv1"));
        assert_eq!(stun_local_ufrag(&binding(b"abc")), Some("abc"));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(stun_local_ufrag(&[]), None);
        assert_eq!(stun_local_ufrag(&[0x80; 40]), None);
        let mut m = binding(b"srv1:cli2");
        m.truncate(30); // attribute cut short
        assert_eq!(stun_local_ufrag(&m), None);
        assert_eq!(stun_local_ufrag(&binding(b":x")), None);
    }
}
