//! UDP conntrack entries that REDIRECT to the wrong listener.
//!
//! A UDP client that keeps its socket (a resolver, a metrics agent) keeps one conntrack entry, and
//! conntrack applies the NAT decision of that entry's first packet to every later one. When a
//! Service port's listener closes (its endpoints went, the Service went) or reopens on another
//! port, or kproxy restarts and numbers its listeners anew, such a client would keep sending to
//! the old proxy port — refused, or worse, another Service's listener. After each sync that changed
//! a UDP listener, the proxier deletes the entries that disagree with the rules now in place; the
//! client's next datagram is a new flow and takes the current rule.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use proxy_core::datapath::{Flow, IPPROTO_UDP};
use proxy_core::ProxyState;

use crate::listeners::Transport;
use crate::plan::{routes, ListenerKey, Route};

/// Where UDP traffic to each Service frontend goes now: the proxy port, or `None` (REJECT, DROP,
/// no listener).
#[derive(Debug, Default)]
pub struct UdpFrontends {
    by_address: HashMap<SocketAddr, Option<u16>>,
    by_node_port: HashMap<u16, Option<u16>>,
}

impl UdpFrontends {
    /// The UDP frontends of `state`, with the proxy port `proxy_port` gives each listener.
    pub fn of(state: &ProxyState, proxy_port: impl Fn(&ListenerKey) -> Option<u16>) -> Self {
        let mut out = Self::default();
        for (name, entry) in state.service_ports() {
            let Some(r) = routes(entry) else { continue };
            if r.transport != Transport::Udp {
                continue;
            }
            let port_of = |route: Route| match route {
                Route::Listener(set) => proxy_port(&ListenerKey {
                    port: name.clone(),
                    endpoints: set,
                }),
                Route::Reject | Route::Drop => None,
            };
            let svc = &*entry.service;
            out.by_address.insert(
                SocketAddr::new(svc.cluster_ip, svc.port),
                port_of(r.internal),
            );
            if let Some(external) = r.external {
                let to = port_of(external);
                for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
                    out.by_address.insert(SocketAddr::new(*ip, svc.port), to);
                }
                if let Some(node_port) = svc.node_port {
                    out.by_node_port.insert(node_port, to);
                }
            }
        }
        out
    }
}

/// Which UDP entries REDIRECT to the wrong listener, judged one at a time (so a dump is judged
/// as it streams).
#[derive(Debug)]
pub struct StaleRedirects<'a> {
    /// Where each frontend's traffic goes now.
    pub frontends: &'a UdpFrontends,
    /// This node's addresses: a redirected entry's reply comes from one of them.
    pub local: &'a HashSet<IpAddr>,
    /// `--proxy-port-range`, if set.
    pub range: Option<&'a RangeInclusive<u16>>,
}

impl StaleRedirects<'_> {
    /// Whether `f` was redirected to a local socket whose port is not the one the rules now give
    /// its frontend; for a destination that is no longer a frontend, whether it was redirected
    /// into the listeners' port range (without a range, kproxy cannot tell its own entries from
    /// others' and leaves them).
    pub fn is_stale(&self, f: &Flow) -> bool {
        if !(f.protocol == IPPROTO_UDP && f.is_dnat() && self.local.contains(&f.reply_src.ip())) {
            return false;
        }
        let expected = self.frontends.by_address.get(&f.orig_dst).or_else(|| {
            self.local
                .contains(&f.orig_dst.ip())
                .then(|| self.frontends.by_node_port.get(&f.orig_dst.port()))
                .flatten()
        });
        match expected {
            Some(Some(port)) => f.reply_src.port() != *port,
            Some(None) => true,
            None => self.range.is_some_and(|r| r.contains(&f.reply_src.port())),
        }
    }
}

/// [`StaleRedirects::is_stale`] over a list.
pub fn stale_redirects(
    flows: &[Flow],
    frontends: &UdpFrontends,
    local: &HashSet<IpAddr>,
    range: Option<&RangeInclusive<u16>>,
) -> Vec<Flow> {
    let policy = StaleRedirects {
        frontends,
        local,
        range,
    };
    flows
        .iter()
        .filter(|f| policy.is_stale(f))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(dst: &str, reply_src: &str) -> Flow {
        Flow {
            protocol: IPPROTO_UDP,
            orig_src: "10.244.1.13:40123".parse().unwrap(),
            orig_dst: dst.parse().unwrap(),
            reply_src: reply_src.parse().unwrap(),
            zone: 0,
        }
    }

    #[test]
    fn entries_disagreeing_with_the_rules_are_stale() {
        let mut frontends = UdpFrontends::default();
        frontends
            .by_address
            .insert("172.30.0.10:53".parse().unwrap(), Some(40010));
        frontends
            .by_address
            .insert("172.30.0.11:53".parse().unwrap(), None);
        frontends.by_node_port.insert(30053, Some(40010));
        let local: HashSet<IpAddr> = ["10.244.1.1", "127.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let range = 40000..=40100;
        let flows = vec![
            flow("172.30.0.10:53", "10.244.1.1:40010"), // current: kept
            flow("172.30.0.10:53", "10.244.1.1:40003"), // the old listener: stale
            flow("172.30.0.11:53", "10.244.1.1:40004"), // now REJECTed: stale
            flow("172.30.0.99:53", "10.244.1.1:40005"), // a Service that went, in range: stale
            flow("172.30.0.98:53", "10.244.1.1:5353"),  // not ours (out of range): kept
            flow("127.0.0.1:30053", "127.0.0.1:40010"), // node port, current: kept
            flow("127.0.0.1:30053", "127.0.0.1:40001"), // node port, old: stale
            flow("172.30.0.10:53", "10.244.1.12:5353"), // DNAT to a pod (not a redirect): kept
            flow("172.30.0.10:53", "172.30.0.10:53"),   // not translated: kept
        ];
        let stale = stale_redirects(&flows, &frontends, &local, Some(&range));
        let stale_ports: Vec<u16> = stale.iter().map(|f| f.reply_src.port()).collect();
        assert_eq!(stale_ports, [40003, 40004, 40005, 40001]);
        // Without a range, a destination that is no frontend is left alone.
        let stale = stale_redirects(&flows, &frontends, &local, None);
        assert_eq!(stale.len(), 3);
    }
}
