//! The conntrack settings kube-proxy applies when it starts (`conntrack.*`, `--conntrack-*`):
//! the table size, the TCP and UDP timeouts, and `nf_conntrack_tcp_be_liberal`. Zero (or unset)
//! leaves a value as the system has it, as upstream does. Best effort: a setting the kernel
//! refuses is logged and the proxy runs on.
//!
//! The table size (`nf_conntrack_max` and the module's hash size) is global, not per network
//! namespace: it is only raised, never lowered, and only from the host's network namespace.

use std::path::Path;
use std::time::Duration;

use proxy_core::config::KubeProxyConfiguration;

const NETFILTER: &str = "/proc/sys/net/netfilter";

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_value(path: &Path, value: u64) {
    if read_number(path) == Some(value) {
        return;
    }
    match std::fs::write(path, value.to_string()) {
        Ok(()) => tracing::info!("set {} to {value}", path.display()),
        Err(e) => tracing::warn!("cannot set {} to {value}: {e}", path.display()),
    }
}

/// Whether this process shares the host's (pid 1's) network namespace.
fn in_host_netns() -> bool {
    let ns = |p: &str| std::fs::read_link(p).ok();
    ns("/proc/self/ns/net").is_some() && ns("/proc/self/ns/net") == ns("/proc/1/ns/net")
}

/// Applies `config.conntrack`.
pub(crate) fn apply(config: &KubeProxyConfiguration) {
    let ct = &config.conntrack;
    let dir = Path::new(NETFILTER);
    let per_core = ct.max_per_core.unwrap_or(0).max(0) as u64;
    if per_core > 0 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let max = (per_core * cpus).max(ct.min.unwrap_or(0).max(0) as u64);
        if !in_host_netns() {
            tracing::debug!("not in the host's network namespace: leaving nf_conntrack_max alone");
        } else {
            let max_path = dir.join("nf_conntrack_max");
            if read_number(&max_path).is_some_and(|current| current < max) {
                write_value(&max_path, max);
            }
            let hash = Path::new("/sys/module/nf_conntrack/parameters/hashsize");
            if read_number(hash).is_some_and(|current| current < max / 4) {
                write_value(hash, max / 4);
            }
        }
    }
    let seconds = |d: Option<Duration>| d.map(|d| d.as_secs()).filter(|s| *s > 0);
    for (name, value) in [
        (
            "nf_conntrack_tcp_timeout_established",
            seconds(ct.tcp_established_timeout.map(|d| d.0)),
        ),
        (
            "nf_conntrack_tcp_timeout_close_wait",
            seconds(ct.tcp_close_wait_timeout.map(|d| d.0)),
        ),
        ("nf_conntrack_udp_timeout", seconds(Some(ct.udp_timeout.0))),
        (
            "nf_conntrack_udp_timeout_stream",
            seconds(Some(ct.udp_stream_timeout.0)),
        ),
        (
            "nf_conntrack_tcp_be_liberal",
            ct.tcp_be_liberal.then_some(1),
        ),
    ] {
        if let Some(v) = value {
            write_value(&dir.join(name), v);
        }
    }
}

/// Applies `oomScoreAdj` to this process.
pub(crate) fn apply_oom_score_adj(config: &KubeProxyConfiguration) {
    if let Some(v) = config.oom_score_adj {
        if let Err(e) = std::fs::write("/proc/self/oom_score_adj", v.to_string()) {
            tracing::warn!("cannot set oom_score_adj to {v}: {e}");
        }
    }
}
