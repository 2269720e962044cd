//! Upstream's names: the table, its base and helper chains, its sets and maps, and the per-Service
//! chain names (`service-<HASH>-<ns>/<name>/<proto>/<port>`), so `nft list table ip kube-proxy`
//! reads as it does under kube-proxy.

use proxy_core::model::{Endpoint, Protocol, ServicePortName};
use sha2::{Digest, Sha256};

/// The table, one per family (`ip` and `ip6`).
pub const TABLE: &str = "kube-proxy";
/// Jumps to service dispatch (nat prerouting/output).
pub const SERVICES: &str = "services";
/// Masquerades what was marked (nat postrouting).
pub const MASQUERADING: &str = "masquerading";
/// Marks a packet for masquerading.
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
/// Drops or rejects traffic to Services without (usable) endpoints.
pub const ENDPOINTS_CHECK: &str = "service-endpoints-check";
/// Load-balancer source ranges.
pub const FIREWALL_CHECK: &str = "firewall-check";
/// Rejects traffic to a cluster IP on a port no Service uses.
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
/// `reject`, the target of `@no-endpoint-*` elements.
pub const REJECT_CHAIN: &str = "reject-chain";

/// Every cluster IP (`cluster-ips-check`).
pub const CLUSTER_IPS: &str = "cluster-ips";
/// The node's addresses that take NodePorts, when `nodePortAddresses` narrows them.
pub const NODEPORT_IPS: &str = "nodeport-ips";
/// `address . protocol . port : verdict` for cluster, external and load-balancer IPs.
pub const SERVICE_IPS: &str = "service-ips";
/// `protocol . port : verdict` for node ports.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// Drop or reject for Service addresses without endpoints.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// Drop or reject for node ports without endpoints.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Load-balancer addresses subject to source ranges.
pub const FIREWALL_IPS: &str = "firewall-ips";
/// The most endpoint maps a table has (`service-endpoints-0` …).
pub const MAX_ENDPOINT_MAPS: u32 = 1024;

/// The name of endpoint map `k`: `service-endpoints-<k>`. Each Service port's policy chain looks
/// its endpoints up in one of them (by a hash of the chain's name); several maps keep the
/// number of rules bound to each map small, which the kernel's cost of an element change
/// grows with.
pub fn endpoint_map(k: u32) -> &'static str {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        (0..MAX_ENDPOINT_MAPS)
            .map(|k| &*Box::leak(format!("service-endpoints-{k}").into_boxed_str()))
            .collect()
    })[k as usize]
}

/// How many endpoint maps a table of `policy_chains` policy chains gets: one per 32 chains, a
/// power of two, at most [`MAX_ENDPOINT_MAPS`].
pub fn endpoint_maps_for(policy_chains: usize) -> u32 {
    (policy_chains.div_ceil(32) as u32)
        .next_power_of_two()
        .clamp(1, MAX_ENDPOINT_MAPS)
}

/// Which endpoint map a policy chain uses among `maps`: a hash of its name, so the choice needs
/// no state and a render makes the same.
pub fn endpoint_map_of(chain: &str, maps: u32) -> u32 {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in chain.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % maps
}

/// `endpoint . endpoint` for every endpoint: a pod reaching itself through its Service is
/// masqueraded (upstream: a rule in every endpoint chain).
pub const HAIRPIN: &str = "hairpin-endpoints";

/// The lower-case protocol name used in chain names and rules.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The IP protocol number.
pub fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// nf_tables' longest name (`NFT_NAME_MAXLEN` - 1) less upstream's longest prefix.
const NAME_BASE_MAX: usize = 256 - 16;

/// Upstream's `hashAndTruncate`: the first 8 base32 characters of the name's SHA-256, a dash,
/// the name, cut to fit with `...`.
pub fn hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    // 8 base32 characters are the first 40 bits.
    let bits = digest[..5]
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let mut out = String::with_capacity(9 + name.len());
    for i in (0..8).rev() {
        out.push(BASE32[((bits >> (i * 5)) & 31) as usize] as char);
    }
    out.push('-');
    out.push_str(name);
    if out.len() > NAME_BASE_MAX {
        out.truncate(NAME_BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

/// The base of a Service port's chain names: `HASH-ns/name/proto/port`.
pub fn service_base(name: &ServicePortName) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        name.service.namespace,
        name.service.name,
        protocol_name(name.protocol),
        name.port
    ))
}

/// The base of an endpoint's chain and affinity set: `HASH-ns/name/proto/port__ip/port`, with
/// an IPv6 address's colons as dots.
pub fn endpoint_base(name: &ServicePortName, endpoint: &Endpoint) -> String {
    let ip = endpoint.ip.to_string().replace(':', ".");
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{}/{}",
        name.service.namespace,
        name.service.name,
        protocol_name(name.protocol),
        name.port,
        ip,
        endpoint.port
    ))
}

/// Whether a chain name is a per-Service one (they all hold a `/`).
pub fn is_service_chain(name: &str) -> bool {
    name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_upstreams_example_shape() {
        let h = hash_and_truncate("ns1/svc1/tcp/p80");
        assert_eq!(h.len(), 8 + 1 + "ns1/svc1/tcp/p80".len());
        assert!(h[..8].bytes().all(|c| BASE32.contains(&c)));
        assert!(h.ends_with("-ns1/svc1/tcp/p80"));
        // Deterministic, and different for different names.
        assert_eq!(h, hash_and_truncate("ns1/svc1/tcp/p80"));
        assert_ne!(h[..8], hash_and_truncate("ns1/svc1/tcp/p81")[..8]);
    }

    #[test]
    fn hashes_are_upstreams() {
        // The examples in upstream's nftables proxier (pkg/proxy/nftables/proxier.go).
        assert_eq!(
            hash_and_truncate("ns1/svc1/tcp/p80"),
            "ULMVA6XW-ns1/svc1/tcp/p80"
        );
        assert_eq!(
            hash_and_truncate("ns1/svc1/tcp/p80__10.180.0.1/80"),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn long_names_are_cut_with_an_ellipsis() {
        let long = "a".repeat(400);
        let h = hash_and_truncate(&long);
        assert_eq!(h.len(), NAME_BASE_MAX);
        assert!(h.ends_with("..."));
    }
}
