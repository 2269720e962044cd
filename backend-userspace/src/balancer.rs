//! Which endpoint a client's connection goes to: round-robin over a Service port's endpoints, with
//! ClientIP session affinity.
//!
//! One [`RoundRobin`] per Service port. Time is passed in (`now`) rather than read, so affinity
//! expiry is decided by the caller's clock and tested without sleeping.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Round-robin over one Service port's endpoints, remembering for a while where each client went
/// when the Service asks for `sessionAffinity: ClientIP`.
#[derive(Debug, Default)]
pub struct RoundRobin {
    endpoints: Vec<SocketAddr>,
    /// Index of the endpoint the next client without affinity gets.
    cursor: usize,
    affinity: Option<Affinity>,
}

/// ClientIP affinity: each client's endpoint and when it last used it.
#[derive(Debug)]
struct Affinity {
    timeout: Duration,
    clients: HashMap<IpAddr, Sticky>,
}

#[derive(Debug, Clone, Copy)]
struct Sticky {
    endpoint: SocketAddr,
    last_used: Instant,
}

impl RoundRobin {
    /// A balancer with no endpoints yet; `affinity_timeout` is the Service's
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` when its affinity is ClientIP, `None`
    /// otherwise.
    pub fn new(affinity_timeout: Option<Duration>) -> Self {
        Self {
            endpoints: Vec::new(),
            cursor: 0,
            affinity: affinity_timeout.map(|timeout| Affinity {
                timeout,
                clients: HashMap::new(),
            }),
        }
    }

    /// The endpoints to balance over, in the order proxy-core selected them. Clients stuck to an
    /// endpoint that is gone lose their affinity; those stuck to one that stays keep it. An equal
    /// list changes nothing (the rotation continues where it was).
    pub fn set_endpoints(&mut self, endpoints: Vec<SocketAddr>) {
        if endpoints == self.endpoints {
            return;
        }
        self.endpoints = endpoints;
        if self.cursor >= self.endpoints.len() {
            self.cursor = 0;
        }
        if let Some(a) = &mut self.affinity {
            let current = &self.endpoints;
            a.clients.retain(|_, s| current.contains(&s.endpoint));
        }
    }

    /// The endpoints balanced over.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// The endpoint for a new connection from `client`: the one it is stuck to (affinity not yet
    /// expired), else the next in turn. `reset_affinity` skips the sticky endpoint, for a retry
    /// after it failed; the client then sticks to the new one. `None` when there are no endpoints.
    pub fn next_endpoint(
        &mut self,
        client: IpAddr,
        now: Instant,
        reset_affinity: bool,
    ) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        if let Some(a) = &mut self.affinity {
            if !reset_affinity {
                if let Some(s) = a.clients.get_mut(&client) {
                    if now.saturating_duration_since(s.last_used) <= a.timeout {
                        s.last_used = now;
                        return Some(s.endpoint);
                    }
                }
            }
        }
        let endpoint = self.endpoints[self.cursor];
        self.cursor = (self.cursor + 1) % self.endpoints.len();
        if let Some(a) = &mut self.affinity {
            a.clients.insert(
                client,
                Sticky {
                    endpoint,
                    last_used: now,
                },
            );
        }
        Some(endpoint)
    }

    /// Forgets clients whose affinity expired by `now` (housekeeping: the map would otherwise
    /// hold every client ever seen).
    pub fn expire(&mut self, now: Instant) {
        if let Some(a) = &mut self.affinity {
            let timeout = a.timeout;
            a.clients
                .retain(|_, s| now.saturating_duration_since(s.last_used) <= timeout);
        }
    }

    /// How many clients currently have affinity.
    pub fn sticky_clients(&self) -> usize {
        self.affinity.as_ref().map_or(0, |a| a.clients.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 244, 0, last], 8080))
    }

    fn client(n: u32) -> IpAddr {
        IpAddr::from((0x0a00_0000u32 + n).to_be_bytes())
    }

    #[test]
    fn spreads_evenly_without_affinity() {
        let mut rr = RoundRobin::new(None);
        rr.set_endpoints(vec![ep(1), ep(2), ep(3)]);
        let now = Instant::now();
        let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
        // the same client every time: without affinity it still rotates
        for _ in 0..3000 {
            *counts
                .entry(rr.next_endpoint(client(1), now, false).unwrap())
                .or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&c| c == 1000), "{counts:?}");
        assert_eq!(rr.sticky_clients(), 0);
    }

    #[test]
    fn affinity_sticks_until_its_timeout() {
        let mut rr = RoundRobin::new(Some(Duration::from_secs(10)));
        rr.set_endpoints(vec![ep(1), ep(2), ep(3)]);
        let t0 = Instant::now();
        let first = rr.next_endpoint(client(1), t0, false).unwrap();
        for s in 1..=10 {
            // each use within the timeout refreshes it
            let at = t0 + Duration::from_secs(s);
            assert_eq!(rr.next_endpoint(client(1), at, false), Some(first));
        }
        // another client gets the next endpoint in turn
        let other = rr.next_endpoint(client(2), t0, false).unwrap();
        assert_ne!(other, first);
        // 11 s after its last use, the affinity has expired: the rotation decides again
        let late = t0 + Duration::from_secs(21);
        assert_ne!(rr.next_endpoint(client(1), late, false), Some(first));
    }

    #[test]
    fn reset_affinity_moves_the_client_on() {
        let mut rr = RoundRobin::new(Some(Duration::from_secs(10800)));
        rr.set_endpoints(vec![ep(1), ep(2)]);
        let now = Instant::now();
        let first = rr.next_endpoint(client(1), now, false).unwrap();
        let retried = rr.next_endpoint(client(1), now, true).unwrap();
        assert_ne!(first, retried);
        assert_eq!(rr.next_endpoint(client(1), now, false), Some(retried));
    }

    #[test]
    fn endpoint_changes_keep_or_drop_affinity() {
        let mut rr = RoundRobin::new(Some(Duration::from_secs(60)));
        rr.set_endpoints(vec![ep(1), ep(2)]);
        let now = Instant::now();
        let a = rr.next_endpoint(client(1), now, false).unwrap();
        let b = rr.next_endpoint(client(2), now, false).unwrap();
        assert_eq!((a, b), (ep(1), ep(2)));
        rr.set_endpoints(vec![ep(2), ep(3)]);
        assert_eq!(
            rr.sticky_clients(),
            1,
            "the client of the removed endpoint lost affinity"
        );
        assert_eq!(rr.next_endpoint(client(2), now, false), Some(ep(2)));
        assert_ne!(rr.next_endpoint(client(1), now, false), Some(ep(1)));
        rr.set_endpoints(Vec::new());
        assert_eq!(rr.next_endpoint(client(1), now, false), None);
        assert_eq!(rr.sticky_clients(), 0);
    }

    #[test]
    fn expire_forgets_idle_clients() {
        let mut rr = RoundRobin::new(Some(Duration::from_secs(5)));
        rr.set_endpoints(vec![ep(1)]);
        let t0 = Instant::now();
        rr.next_endpoint(client(1), t0, false);
        rr.next_endpoint(client(2), t0 + Duration::from_secs(4), false);
        rr.expire(t0 + Duration::from_secs(6));
        assert_eq!(rr.sticky_clients(), 1);
    }
}
