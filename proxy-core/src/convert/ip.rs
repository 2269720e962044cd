//! Reading addresses from API objects the way kube-proxy does: leniently.
//!
//! Objects stored by old API servers can hold IPv4 addresses with leading zeros
//! (`172.30.0.041`, `10.180.00.001`). Go's parser refused them from Go 1.17, so Kubernetes parses
//! addresses "sloppily" (`netutils.ParseIPSloppy`): a leading zero is decimal, never octal, and the
//! canonical form is what gets programmed. Every address kproxy reads from an object goes through
//! here, so such a Service is programmed, not skipped.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

/// Parses an IP address, allowing leading zeros in IPv4 octets (decimal).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if s.contains(':') {
        return None; // IPv6 has no legacy spelling to forgive
    }
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = part.trim_start_matches('0');
        *octet = if digits.is_empty() {
            0
        } else if digits.len() > 3 {
            return None;
        } else {
            digits.parse::<u16>().ok().filter(|v| *v <= 255)? as u8
        };
    }
    parts
        .next()
        .is_none()
        .then(|| IpAddr::V4(Ipv4Addr::from(octets)))
}

/// Parses a CIDR (the prefix is required) leniently, normalised to its network (`10.0.0.1/8` →
/// `10.0.0.0/8`, as Go's `ParseCIDR` does).
pub fn parse_cidr(s: &str) -> Option<IpNetwork> {
    let (addr, prefix) = s.trim().split_once('/')?;
    let ip = parse_ip(addr)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let net = IpNetwork::new(ip, prefix.parse().ok()?).ok()?;
    IpNetwork::new(net.network(), net.prefix()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zeros_are_decimal_and_canonicalised() {
        assert_eq!(
            parse_ip("172.30.0.041"),
            Some("172.30.0.41".parse().unwrap())
        );
        assert_eq!(
            parse_ip("10.180.00.001"),
            Some("10.180.0.1".parse().unwrap())
        );
        assert_eq!(parse_ip("010.0.0.0008"), Some("10.0.0.8".parse().unwrap()));
        assert_eq!(parse_ip("fd00::0001"), Some("fd00::1".parse().unwrap()));
        for bad in [
            "256.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            "a.b.c.d",
            "1.2.3.04x",
            "",
        ] {
            assert_eq!(parse_ip(bad), None, "{bad}");
        }
        assert_eq!(
            parse_cidr("010.000.0.0/08"),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(parse_cidr("10.0.0.1"), None, "a bare IP is not a CIDR");
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
