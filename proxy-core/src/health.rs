//! `/healthz` and `/livez`: is the proxy keeping its rules up to date?
//!
//! Upstream's rule: the proxy is unhealthy when a change has been waiting longer than the health
//! timeout (2 × `syncPeriod`) for a sync that would apply it. `/healthz` is also unhealthy while the
//! node is being deleted (so load balancers drain it); `/livez` ignores the node. Time is passed in,
//! so the rule is tested without waiting.

use std::time::{Duration, SystemTime};

/// The health state the sync loop keeps up to date.
#[derive(Clone, Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    last_updated: Option<SystemTime>,
    oldest_queued: Option<SystemTime>,
    node_eligible: bool,
}

/// One health answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// Whether to answer 200 (else 503).
    pub healthy: bool,
    /// The JSON body: `lastUpdated`, `currentTime`, `nodeEligible`, `healthy`.
    pub body: String,
}

impl ProxyHealth {
    /// A health state with `timeout` (kube-proxy uses 2 × `syncPeriod`).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            last_updated: None,
            oldest_queued: None,
            node_eligible: true,
        }
    }

    /// A change was queued at `now` (only the oldest waiting one counts).
    pub fn queued(&mut self, now: SystemTime) {
        self.oldest_queued.get_or_insert(now);
    }

    /// A sync that applied every queued change finished at `now`.
    pub fn updated(&mut self, now: SystemTime) {
        self.last_updated = Some(now);
        self.oldest_queued = None;
    }

    /// Whether the node may take traffic (false while it is being deleted).
    pub fn set_node_eligible(&mut self, eligible: bool) {
        self.node_eligible = eligible;
    }

    fn rules_current(&self, now: SystemTime) -> bool {
        match self.oldest_queued {
            None => true,
            Some(q) => now.duration_since(q).unwrap_or_default() < self.timeout,
        }
    }

    /// The `/healthz` answer at `now`.
    pub fn healthz(&self, now: SystemTime) -> HealthReport {
        self.report(now, self.rules_current(now) && self.node_eligible)
    }

    /// The `/livez` answer at `now` (the node's state does not matter).
    pub fn livez(&self, now: SystemTime) -> HealthReport {
        self.report(now, self.rules_current(now))
    }

    fn report(&self, now: SystemTime, healthy: bool) -> HealthReport {
        let last = self.last_updated.map(rfc3339).unwrap_or_default();
        HealthReport {
            healthy,
            body: format!(
                "{{\"lastUpdated\": \"{last}\",\"currentTime\": \"{}\", \"nodeEligible\": {}, \"healthy\": {healthy}}}",
                rfc3339(now),
                self.node_eligible
            ),
        }
    }
}

pub use crate::rfc3339::format as rfc3339;

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn healthy_until_a_change_waits_too_long() {
        let mut h = ProxyHealth::new(Duration::from_secs(60));
        assert!(h.healthz(t(1000)).healthy, "nothing queued");
        h.updated(t(1000));
        h.queued(t(1010));
        h.queued(t(1050)); // the oldest counts
        assert!(h.healthz(t(1069)).healthy);
        assert!(!h.healthz(t(1070)).healthy);
        assert!(!h.livez(t(1070)).healthy);
        h.updated(t(1071));
        assert!(h.healthz(t(2000)).healthy, "applied: healthy again");
    }

    #[test]
    fn a_deleted_node_fails_healthz_but_not_livez() {
        let mut h = ProxyHealth::new(Duration::from_secs(60));
        h.set_node_eligible(false);
        assert!(!h.healthz(t(0)).healthy);
        assert!(h.livez(t(0)).healthy);
        assert!(h.healthz(t(0)).body.contains("\"nodeEligible\": false"));
    }

    #[test]
    fn body_is_json_with_times() {
        let mut h = ProxyHealth::new(Duration::from_secs(60));
        h.updated(t(1_700_000_000));
        let body = h.healthz(t(1_700_000_005)).body;
        assert_eq!(
            body,
            "{\"lastUpdated\": \"2023-11-14T22:13:20.000Z\",\"currentTime\": \"2023-11-14T22:13:25.000Z\", \"nodeEligible\": true, \"healthy\": true}"
        );
    }
}
