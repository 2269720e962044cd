//! The kernel settings IPVS mode needs, set and checked as upstream does at start-up.

use std::path::PathBuf;

/// A sysctl that could not be read or set.
#[derive(Debug, thiserror::Error)]
#[error("sysctl {name}: {what}")]
pub struct SysctlError {
    /// The sysctl, e.g. `net/ipv4/vs/conntrack`.
    pub name: String,
    /// What failed.
    pub what: String,
}

/// Reads and writes `/proc/sys` (a different root in tests).
#[derive(Clone, Debug)]
pub struct Sysctls {
    root: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc/sys"),
        }
    }
}

impl Sysctls {
    /// Sysctls under `root` instead of `/proc/sys`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Result<i64, SysctlError> {
        let fail = |what: String| SysctlError {
            name: name.to_owned(),
            what,
        };
        let text = std::fs::read_to_string(self.root.join(name))
            .map_err(|e| fail(format!("reading: {e}")))?;
        text.trim()
            .parse()
            .map_err(|_| fail(format!("not a number: {:?}", text.trim())))
    }

    /// Sets `name` to `value` unless it has it; then reads it back. Returns whether it changed.
    pub fn ensure(&self, name: &str, value: i64) -> Result<bool, SysctlError> {
        if self.get(name)? == value {
            return Ok(false);
        }
        std::fs::write(self.root.join(name), format!("{value}\n")).map_err(|e| SysctlError {
            name: name.to_owned(),
            what: format!("writing {value}: {e}"),
        })?;
        let now = self.get(name)?;
        if now != value {
            return Err(SysctlError {
                name: name.to_owned(),
                what: format!("set to {value}, reads back {now}"),
            });
        }
        Ok(true)
    }
}

/// The kernel version as `(major, minor)`, from `/proc/sys/kernel/osrelease`.
pub fn kernel_version(s: &Sysctls) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(s.root.join("kernel/osrelease")).ok()?;
    let mut parts = text.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// What IPVS mode sets: `(sysctl, value, why)`. `conn_reuse_mode` is decided by
/// [`conn_reuse_setting`].
pub const REQUIRED: &[(&str, i64, &str)] = &[
    (
        "net/ipv4/vs/conntrack",
        1,
        "IPVS connections must pass conntrack so masquerading and the KUBE-* rules see them",
    ),
    (
        "net/ipv4/vs/expire_nodest_conn",
        1,
        "connections to a deleted real server are dropped at their next packet, not left hanging",
    ),
    (
        "net/ipv4/vs/expire_quiescent_template",
        1,
        "affinity templates to a weight-0 server expire, so clients move off a terminating server",
    ),
    (
        "net/ipv4/ip_forward",
        1,
        "traffic to remote endpoints is forwarded",
    ),
];

/// With `strictARP`: the node does not answer ARP for addresses on `kube-ipvs0`.
pub const STRICT_ARP: &[(&str, i64, &str)] = &[
    ("net/ipv4/conf/all/arp_ignore", 1, "strict ARP"),
    ("net/ipv4/conf/all/arp_announce", 2, "strict ARP"),
];

/// `conn_reuse_mode` as upstream decides it (kubernetes/kubernetes#93297): kernels before 4.1
/// lack it; from 5.9 the 1-second SYN delay on reused source ports is fixed in the kernel and the
/// value is left alone; between, 0 avoids the delay. `None`: leave it.
pub fn conn_reuse_setting(version: Option<(u32, u32)>) -> Option<i64> {
    match version {
        Some(v) if v < (4, 1) => None,
        Some(v) if v >= (5, 9) => None,
        Some(_) => Some(0),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_writes_only_when_different_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("kproxy-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net/ipv4/vs")).unwrap();
        std::fs::write(dir.join("net/ipv4/vs/conntrack"), "0\n").unwrap();
        let s = Sysctls::at(&dir);
        assert!(s.ensure("net/ipv4/vs/conntrack", 1).unwrap());
        assert!(!s.ensure("net/ipv4/vs/conntrack", 1).unwrap());
        assert_eq!(s.get("net/ipv4/vs/conntrack").unwrap(), 1);
        assert!(s.ensure("net/ipv4/vs/missing", 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn conn_reuse_follows_upstreams_kernel_cutoffs() {
        assert_eq!(conn_reuse_setting(Some((3, 10))), None);
        assert_eq!(conn_reuse_setting(Some((4, 19))), Some(0));
        assert_eq!(conn_reuse_setting(Some((5, 9))), None);
        assert_eq!(conn_reuse_setting(Some((6, 1))), None);
    }
}
