//! [`ProxyMode`]: the datapaths kproxy knows by name (`--proxy-mode`, the config's `mode`).
//!
//! The name list lives here, once, so the flag, the config file and the error for an unknown or
//! unbuilt mode all say the same thing.

use std::fmt;
use std::str::FromStr;

/// A proxy mode, spelled as kube-proxy spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyMode {
    /// iptables-restore rules in kube-proxy's layout (the default on Linux).
    Iptables,
    /// IPVS virtual and real servers, with ipsets and a constant iptables ruleset.
    Ipvs,
    /// nf_tables over netlink.
    Nftables,
    /// A userspace round-robin TCP/UDP proxy behind REDIRECT rules.
    Userspace,
}

impl ProxyMode {
    /// Every mode kproxy knows, in the order messages list them.
    pub const ALL: [ProxyMode; 4] = [
        ProxyMode::Iptables,
        ProxyMode::Ipvs,
        ProxyMode::Nftables,
        ProxyMode::Userspace,
    ];

    /// The name `--proxy-mode` and `mode:` take.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Ipvs => "ipvs",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Userspace => "userspace",
        }
    }

    /// The mode a configuration's `mode` field names; empty means the default, iptables, as
    /// upstream decides on Linux.
    pub fn from_config(value: &str) -> Result<Self, UnknownMode> {
        if value.is_empty() {
            return Ok(ProxyMode::Iptables);
        }
        value.parse()
    }

    /// `"iptables, ipvs, nftables, userspace"`: for messages that list the valid names.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name kproxy does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown proxy mode {name:?}; the modes are: {}", ProxyMode::names())]
pub struct UnknownMode {
    /// The name given.
    pub name: String,
}

impl FromStr for ProxyMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode { name: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_empty_is_iptables() {
        for m in ProxyMode::ALL {
            assert_eq!(m.as_str().parse::<ProxyMode>(), Ok(m));
        }
        assert_eq!(ProxyMode::from_config(""), Ok(ProxyMode::Iptables));
        let err = "kernelspace".parse::<ProxyMode>().unwrap_err().to_string();
        assert!(err.contains("\"kernelspace\""), "{err}");
        assert!(err.contains("iptables, ipvs, nftables, userspace"), "{err}");
    }
}
