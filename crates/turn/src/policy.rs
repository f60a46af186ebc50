//! Peer address policy: which peers an allocation may relay to (RFC 8656 §21.3 recommendations).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// One configured range: CIDR (`10.0.0.0/8`), single address (`127.0.0.1`) or coturn range (`a-b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpRange {
    Net(IpNet),
    Span(IpAddr, IpAddr),
}

impl IpRange {
    /// Parse a range string.
    pub fn parse(s: &str) -> Result<IpRange, String> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once('-') {
            let a: IpAddr = a
                .trim()
                .parse()
                .map_err(|_| format!("invalid IP range {s:?}"))?;
            let b: IpAddr = b
                .trim()
                .parse()
                .map_err(|_| format!("invalid IP range {s:?}"))?;
            if a.is_ipv4() != b.is_ipv4() || a > b {
                return Err(format!("invalid IP range {s:?}"));
            }
            return Ok(IpRange::Span(a, b));
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(IpRange::Net(net.trunc()));
        }
        let ip: IpAddr = s
            .parse()
            .map_err(|_| format!("invalid IP, CIDR or range {s:?}"))?;
        Ok(IpRange::Net(IpNet::from(ip)))
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match self {
            IpRange::Net(n) => n.contains(ip),
            IpRange::Span(a, b) => a.is_ipv4() == ip.is_ipv4() && a <= ip && ip <= b,
        }
    }
}

/// Allowed/denied peer ranges on top of the default deny list.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    pub allowed: Vec<IpRange>,
    pub denied: Vec<IpRange>,
}

impl PeerPolicy {
    pub fn new(allowed: &[String], denied: &[String]) -> Result<Self, String> {
        Ok(PeerPolicy {
            allowed: allowed
                .iter()
                .map(|s| IpRange::parse(s))
                .collect::<Result<_, _>>()?,
            denied: denied
                .iter()
                .map(|s| IpRange::parse(s))
                .collect::<Result<_, _>>()?,
        })
    }

    /// May an allocation relay to `ip`? `allowed-peer-ip` wins over everything, then `denied-peer-ip`,
    /// then the default deny list.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.allowed.iter().any(|r| r.contains(&ip)) {
            return true;
        }
        if self.denied.iter().any(|r| r.contains(&ip)) {
            return false;
        }
        !denied_by_default(ip)
    }
}

/// Map IPv4-mapped IPv6 addresses to IPv4 so that `::ffff:127.0.0.1` is treated as loopback.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Loopback, RFC 1918, ULA, link-local, multicast, broadcast and unspecified/"this network".
pub fn denied_by_default(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => denied_v4(v4),
        IpAddr::V6(v6) => denied_v6(v6),
    }
}

fn denied_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.octets()[0] == 0
}

fn denied_v6(ip: Ipv6Addr) -> bool {
    let seg0 = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (seg0 & 0xfe00) == 0xfc00 // ULA fc00::/7
        || (seg0 & 0xffc0) == 0xfe80 // link-local fe80::/10
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn defaults() {
        let p = PeerPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} should be denied");
        }
        for good in ["8.8.8.8", "172.32.0.1", "2001:4860::8888", "192.0.2.1"] {
            assert!(p.permits(ip(good)), "{good} should be allowed");
        }
    }

    #[test]
    fn overrides() {
        let p = PeerPolicy::new(
            &[
                "127.0.0.1".into(),
                "10.0.0.0/8".into(),
                "192.168.1.10-192.168.1.20".into(),
            ],
            &["8.8.8.0/24".into(), "10.1.0.0/16".into()],
        )
        .expect("policy");
        assert!(p.permits(ip("127.0.0.1")));
        assert!(!p.permits(ip("127.0.0.2")));
        assert!(p.permits(ip("10.1.2.3"))); // allowed wins over denied
        assert!(p.permits(ip("192.168.1.15")));
        assert!(!p.permits(ip("192.168.1.21")));
        assert!(!p.permits(ip("8.8.8.8")));
        assert!(p.permits(ip("8.8.4.4")));
        assert!(PeerPolicy::new(&["nonsense".into()], &[]).is_err());
        assert!(PeerPolicy::new(&["10.0.0.9-10.0.0.1".into()], &[]).is_err());
    }
}
