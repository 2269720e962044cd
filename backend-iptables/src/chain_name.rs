//! kube-proxy's chain names: `KUBE-SVC-` + base32(sha256(name + protocol))[..16], and friends.

use std::fmt;

use sha2::{Digest, Sha256};

/// The prefix of a per-Service or per-endpoint chain, which says what the chain does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainKind {
    /// `KUBE-SVC-`: spreads Cluster-policy traffic over the cluster endpoints.
    Service,
    /// `KUBE-SVL-`: spreads Local-policy traffic over this node's endpoints.
    ServiceLocal,
    /// `KUBE-EXT-`: entry point for external traffic (node ports, external and LB IPs).
    External,
    /// `KUBE-FW-`: applies `loadBalancerSourceRanges`.
    Firewall,
    /// `KUBE-SEP-`: masquerades hairpin traffic and DNATs to one endpoint.
    Endpoint,
}

impl ChainKind {
    /// The chain-name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            ChainKind::Service => "KUBE-SVC-",
            ChainKind::ServiceLocal => "KUBE-SVL-",
            ChainKind::External => "KUBE-EXT-",
            ChainKind::Firewall => "KUBE-FW-",
            ChainKind::Endpoint => "KUBE-SEP-",
        }
    }

    /// Every per-Service prefix; a chain whose name starts with one of these is kproxy's (and
    /// kube-proxy's) to delete when it is no longer used.
    pub const ALL: [ChainKind; 5] = [
        ChainKind::Service,
        ChainKind::ServiceLocal,
        ChainKind::External,
        ChainKind::Firewall,
        ChainKind::Endpoint,
    ];
}

/// A 16-character hash as used in chain names. `Copy` and allocation-free: at 200,000 endpoints the
/// renderer handles a lot of them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameHash([u8; 16]);

impl NameHash {
    /// The hash of `parts` concatenated, the way kube-proxy builds it: sha256, standard base32
    /// (RFC 4648 alphabet), first 16 characters.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for p in parts {
            hasher.update(p);
        }
        let digest = hasher.finalize();
        Self(base32_prefix16(&digest[..10]))
    }

    /// The 16 ASCII characters.
    pub fn as_str(&self) -> &str {
        // Only base32 alphabet bytes are ever stored.
        std::str::from_utf8(&self.0).expect("base32 is ASCII")
    }
}

impl fmt::Debug for NameHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Encodes 10 bytes (80 bits) as 16 base32 characters: exactly the first 16 characters of the
/// standard base32 encoding of any longer input starting with those bytes.
fn base32_prefix16(bytes: &[u8]) -> [u8; 16] {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = [0u8; 16];
    for (group, chunk) in bytes.chunks_exact(5).enumerate() {
        let mut v: u64 = 0;
        for b in chunk {
            v = (v << 8) | u64::from(*b);
        }
        for i in 0..8 {
            let shift = 35 - 5 * i;
            out[group * 8 + i] = ALPHABET[((v >> shift) & 0x1f) as usize];
        }
    }
    out
}

/// A per-Service or per-endpoint chain name. `Copy`, no allocation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainName {
    /// What the chain does.
    pub kind: ChainKind,
    /// The hash that makes it unique.
    pub hash: NameHash,
}

impl ChainName {
    /// Writes the name into `out`.
    pub fn write_to(&self, out: &mut String) {
        out.push_str(self.kind.prefix());
        out.push_str(self.hash.as_str());
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.prefix())?;
        f.write_str(self.hash.as_str())
    }
}

impl fmt::Debug for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Whether `name` is a per-Service or per-endpoint chain of ours (any of [`ChainKind::ALL`]).
pub fn is_service_chain(name: &str) -> bool {
    ChainKind::ALL.iter().any(|k| name.starts_with(k.prefix()))
}

/// Parses a per-Service or per-endpoint chain name (`KUBE-SEP-` + 16 base32 characters).
pub fn parse_chain_name(name: &str) -> Option<ChainName> {
    let kind = ChainKind::ALL
        .into_iter()
        .find(|k| name.starts_with(k.prefix()))?;
    let rest = &name.as_bytes()[kind.prefix().len()..];
    let valid = rest.len() == 16
        && rest
            .iter()
            .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(c));
    valid.then(|| {
        let mut hash = [0u8; 16];
        hash.copy_from_slice(rest);
        ChainName {
            kind,
            hash: NameHash(hash),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kube_proxy_names() {
        // Both pairs are from kube-proxy's own tests and DESIGN.md.
        let svc = NameHash::of(&[b"ns1/svc1:p80", b"tcp"]);
        assert_eq!(
            ChainName {
                kind: ChainKind::Service,
                hash: svc
            }
            .to_string(),
            "KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        let sep = NameHash::of(&[b"ns1/svc1:p80", b"tcp", b"10.180.0.1:80"]);
        assert_eq!(
            ChainName {
                kind: ChainKind::Endpoint,
                hash: sep
            }
            .to_string(),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn base32_of_known_bytes() {
        // RFC 4648 test vector: BASE32("fooba") = "MZXW6YTB"
        assert_eq!(&base32_prefix16(b"foobafooba"), b"MZXW6YTBMZXW6YTB");
    }

    #[test]
    fn recognises_service_chains() {
        assert!(is_service_chain("KUBE-SEP-SXIVWICOYRO3J4NJ"));
        assert!(is_service_chain("KUBE-FW-NUKIZ6OKUXPJNT4C"));
        assert!(!is_service_chain("KUBE-SERVICES"));
        assert!(!is_service_chain("DOCKER"));
    }

    #[test]
    fn parses_chain_names_back() {
        let c = parse_chain_name("KUBE-SEP-SXIVWICOYRO3J4NJ").unwrap();
        assert_eq!(c.kind, ChainKind::Endpoint);
        assert_eq!(c.to_string(), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        assert!(parse_chain_name("KUBE-SEP-short").is_none());
        assert!(parse_chain_name("KUBE-SERVICES").is_none());
        assert!(parse_chain_name("KUBE-SVC-xpgd46qrk7wjzt7o").is_none());
    }
}
