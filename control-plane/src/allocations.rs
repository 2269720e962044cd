//! What Services hold: cluster IPs and node ports, indexed as the store changes, so allocating or
//! checking one never scans the stored Services (the real API server keeps bitmaps for the same
//! reason).
//!
//! Counts, not sets: a store loaded from disk may hold a duplicate an earlier version let through,
//! and releasing one holder must not free the other's. Allocation scans from a cursor that moves
//! past what it hands out, so a run of creates costs O(1) each, and a freed address is reused only
//! once the cursor comes round again (as the real allocator avoids reusing at once).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde_json::Value;

/// The cluster IPs and node ports the stored Services hold.
#[derive(Debug, Default)]
pub struct ServiceAllocations {
    cluster_ips: HashMap<String, u32>,
    node_ports: HashMap<i64, u32>,
    /// The cluster-IP offset the next search starts at.
    ip_cursor: u32,
    /// The node port the next search starts at.
    port_cursor: i64,
}

/// Every node port `svc` holds: its ports' `nodePort`s and its `healthCheckNodePort`.
pub fn node_ports_of(svc: &Value) -> impl Iterator<Item = i64> + '_ {
    let spec = &svc["spec"];
    spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_i64())
        .chain(spec["healthCheckNodePort"].as_i64())
        .filter(|&n| n != 0)
}

fn cluster_ip_of(svc: &Value) -> Option<&str> {
    svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

impl ServiceAllocations {
    /// Records what a stored Service holds.
    pub fn add(&mut self, svc: &Value) {
        if let Some(ip) = cluster_ip_of(svc) {
            *self.cluster_ips.entry(ip.to_owned()).or_default() += 1;
        }
        for port in node_ports_of(svc) {
            *self.node_ports.entry(port).or_default() += 1;
        }
    }

    /// Forgets what a Service that left the store held.
    pub fn remove(&mut self, svc: &Value) {
        if let Some(ip) = cluster_ip_of(svc) {
            release(&mut self.cluster_ips, ip);
        }
        for port in node_ports_of(svc) {
            release(&mut self.node_ports, &port);
        }
    }

    /// Whether a stored Service holds `ip` as its cluster IP.
    pub fn cluster_ip_in_use(&self, ip: &str) -> bool {
        self.cluster_ips.contains_key(ip)
    }

    /// How many stored Services hold node port `port`.
    pub fn node_port_holders(&self, port: i64) -> u32 {
        self.node_ports.get(&port).copied().unwrap_or(0)
    }

    /// A free cluster IP of `net`/`size` (network and broadcast offsets excluded), searching from
    /// the cursor; `None` when every one is taken.
    pub fn next_free_cluster_ip(&mut self, net: Ipv4Addr, size: u32) -> Option<Ipv4Addr> {
        let usable = size.saturating_sub(2);
        for step in 0..usable {
            let offset = 1 + (self.ip_cursor.wrapping_add(step)) % usable;
            let ip = Ipv4Addr::from(u32::from(net).wrapping_add(offset));
            if !self.cluster_ips.contains_key(&ip.to_string()) {
                self.ip_cursor = offset % usable; // the next search starts after it
                return Some(ip);
            }
        }
        None
    }

    /// A node port of `low..=high` that no stored Service holds and `taken` does not name (ports
    /// chosen earlier in the same request), searching from the cursor.
    pub fn next_free_node_port(
        &mut self,
        low: i64,
        high: i64,
        taken: impl Fn(i64) -> bool,
    ) -> Option<i64> {
        let size = high - low + 1;
        if size <= 0 {
            return None;
        }
        // A cursor outside the range (the first search, or another range) starts at its low end.
        let start = if (low..=high).contains(&self.port_cursor) {
            self.port_cursor
        } else {
            low
        };
        for step in 0..size {
            let port = low + (start - low + step).rem_euclid(size);
            if self.node_port_holders(port) == 0 && !taken(port) {
                self.port_cursor = port + 1;
                return Some(port);
            }
        }
        None
    }
}

fn release<K>(map: &mut HashMap<K::Owned, u32>, key: &K)
where
    K: std::hash::Hash + Eq + ToOwned + ?Sized,
    K::Owned: std::hash::Hash + Eq + std::borrow::Borrow<K>,
{
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc(ip: &str, node_ports: &[i64]) -> Value {
        let ports: Vec<Value> = node_ports
            .iter()
            .map(|p| json!({"port": 80, "nodePort": p}))
            .collect();
        json!({"spec": {"clusterIP": ip, "ports": ports}})
    }

    #[test]
    fn allocation_moves_on_and_freed_addresses_come_back_after_a_round() {
        let mut a = ServiceAllocations::default();
        let net: Ipv4Addr = "10.96.0.0".parse().unwrap();
        // A /29: offsets 1..=6 usable.
        let mut got = Vec::new();
        for _ in 0..6 {
            let ip = a.next_free_cluster_ip(net, 8).unwrap();
            a.add(&svc(&ip.to_string(), &[]));
            got.push(ip.to_string());
        }
        assert_eq!(got[0], "10.96.0.1");
        assert_eq!(got[5], "10.96.0.6");
        assert_eq!(a.next_free_cluster_ip(net, 8), None, "full");
        a.remove(&svc("10.96.0.3", &[]));
        assert_eq!(
            a.next_free_cluster_ip(net, 8).map(|i| i.to_string()),
            Some("10.96.0.3".into())
        );
    }

    #[test]
    fn node_ports_are_counted_per_holder() {
        let mut a = ServiceAllocations::default();
        a.add(&svc("10.96.0.1", &[30000, 30001]));
        a.add(&svc("10.96.0.2", &[30001])); // a duplicate loaded from disk
        assert_eq!(a.node_port_holders(30001), 2);
        a.remove(&svc("10.96.0.2", &[30001]));
        assert_eq!(a.node_port_holders(30001), 1, "the other holder keeps it");
        assert_eq!(
            a.next_free_node_port(30000, 30003, |p| p == 30002),
            Some(30003)
        );
        assert_eq!(a.next_free_node_port(30000, 30003, |_| false), Some(30002));
        assert!(a.cluster_ip_in_use("10.96.0.1"));
        assert!(!a.cluster_ip_in_use("10.96.0.2"));
    }
}
