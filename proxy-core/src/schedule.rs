//! When to sync: kube-proxy's bounded-frequency rule, as a pure state machine.
//!
//! The daemon's loop asks [`SyncSchedule::next_wake`] when to wake, and at that time
//! [`SyncSchedule::due`] whether to sync and how. Time is passed in, never read, so the rule is
//! tested with made-up instants and the core keeps no runtime dependency.
//!
//! The rule (upstream's `BoundedFrequencyRunner`):
//! - a change requests a sync, which runs as soon as `min_interval` has passed since the last one
//!   (so bursts of changes coalesce into one sync at most every `min_interval`);
//! - a full resync runs at least every `max_interval` (`syncPeriod`) even with no change;
//! - after a failed sync, another runs after `retry_interval` (or sooner, if a change allows), and it
//!   is full;
//! - nothing runs before the sources have synced (the caller's [`SyncSchedule::due`] argument).

use std::time::{Duration, Instant};

/// What kind of sync is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// Apply the pending changes (a partial sync where the backend can).
    Changes,
    /// Rewrite everything: the periodic resync, or the retry after a failure.
    Full,
}

/// The schedule's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Minimum time between two syncs (`minSyncPeriod`); zero syncs every change at once.
    pub min_interval: Duration,
    /// Maximum time between two syncs (`syncPeriod`): the periodic full resync.
    pub max_interval: Duration,
    /// Time before retrying a failed sync.
    pub retry_interval: Duration,
}

/// The bounded-frequency sync schedule.
#[derive(Clone, Debug)]
pub struct SyncSchedule {
    config: ScheduleConfig,
    last_run: Option<Instant>,
    last_full: Option<Instant>,
    requested: bool,
    failed_at: Option<Instant>,
}

impl SyncSchedule {
    /// A schedule that has never run.
    pub fn new(config: ScheduleConfig) -> Self {
        Self {
            config,
            last_run: None,
            last_full: None,
            requested: false,
            failed_at: None,
        }
    }

    /// A change arrived: a sync is wanted.
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// Whether a change is waiting for a sync.
    pub fn is_requested(&self) -> bool {
        self.requested
    }

    /// The sync due at `now`, if any. `sources_synced`: the initial lists are in; before that
    /// nothing is due, whatever else holds.
    pub fn due(&self, now: Instant, sources_synced: bool) -> Option<SyncKind> {
        if !sources_synced {
            return None;
        }
        let Some(last) = self.last_run else {
            return Some(SyncKind::Full); // the first sync
        };
        if let Some(failed) = self.failed_at {
            if now >= failed + self.config.retry_interval
                || (self.requested && now >= last + self.config.min_interval)
            {
                return Some(SyncKind::Full);
            }
            return None;
        }
        let last_full = self.last_full.unwrap_or(last);
        if now >= last_full + self.config.max_interval {
            return Some(SyncKind::Full);
        }
        if self.requested && now >= last + self.config.min_interval {
            return Some(SyncKind::Changes);
        }
        None
    }

    /// When the loop should wake next (it may also wake early, on a change).
    pub fn next_wake(&self, now: Instant) -> Instant {
        let Some(last) = self.last_run else {
            return now;
        };
        let last_full = self.last_full.unwrap_or(last);
        let mut wake = last_full + self.config.max_interval;
        if self.requested {
            wake = wake.min(last + self.config.min_interval);
        }
        if let Some(failed) = self.failed_at {
            wake = wake.min(failed + self.config.retry_interval);
        }
        wake.max(now)
    }

    /// Records a sync of `kind` that started at `started` and succeeded or not. Changes that arrive
    /// during a sync call [`request`](Self::request) after `started`, and stay requested.
    pub fn ran(&mut self, kind: SyncKind, started: Instant, ok: bool) {
        self.last_run = Some(started);
        self.requested = false;
        if ok {
            self.failed_at = None;
            if kind == SyncKind::Full {
                self.last_full = Some(started);
            }
        } else {
            self.failed_at = Some(started);
        }
    }
}

impl SyncSchedule {
    /// Records that the full sync recorded by [`ran`](Self::ran) ended at `at`: the periodic
    /// resync counts from there. A full sync that takes about `syncPeriod` itself (iptables-nft at
    /// 20,000 Services) would otherwise make the next one due the moment it ends, and changes would
    /// only ever ride on back-to-back full syncs.
    pub fn full_sync_finished(&mut self, at: Instant) {
        if self.failed_at.is_none() && self.last_full.is_some() {
            self.last_full = Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> (SyncSchedule, Instant) {
        let config = ScheduleConfig {
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(5),
        };
        (SyncSchedule::new(config), Instant::now())
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn nothing_before_the_sources_have_synced() {
        let (mut s, t0) = schedule();
        s.request();
        assert_eq!(s.due(t0, false), None);
        assert_eq!(
            s.due(t0, true),
            Some(SyncKind::Full),
            "the first sync is full"
        );
    }

    #[test]
    fn changes_coalesce_to_one_sync_per_min_interval() {
        let (mut s, t0) = schedule();
        s.ran(SyncKind::Full, t0, true);
        s.request();
        assert_eq!(
            s.due(at(t0, 500), true),
            None,
            "too soon after the last sync"
        );
        assert_eq!(s.next_wake(at(t0, 500)), at(t0, 1000));
        s.request(); // another change: still one sync
        assert_eq!(s.due(at(t0, 1000), true), Some(SyncKind::Changes));
        s.ran(SyncKind::Changes, at(t0, 1000), true);
        assert_eq!(s.due(at(t0, 1500), true), None, "nothing pending");
    }

    #[test]
    fn periodic_full_resync_without_changes() {
        let (mut s, t0) = schedule();
        s.ran(SyncKind::Full, t0, true);
        assert_eq!(s.due(at(t0, 29_000), true), None);
        assert_eq!(s.next_wake(at(t0, 29_000)), at(t0, 30_000));
        assert_eq!(s.due(at(t0, 30_000), true), Some(SyncKind::Full));
        // Partial syncs do not postpone the periodic full one.
        s.request();
        s.ran(SyncKind::Changes, at(t0, 10_000), true);
        assert_eq!(s.due(at(t0, 30_000), true), Some(SyncKind::Full));
    }

    #[test]
    fn a_failure_is_retried_fully() {
        let (mut s, t0) = schedule();
        s.ran(SyncKind::Full, t0, true);
        s.request();
        s.ran(SyncKind::Changes, at(t0, 1000), false);
        assert_eq!(
            s.due(at(t0, 2000), true),
            None,
            "waits for the retry interval"
        );
        assert_eq!(s.next_wake(at(t0, 2000)), at(t0, 6000));
        assert_eq!(s.due(at(t0, 6000), true), Some(SyncKind::Full));
        // A new change may bring the retry forward, but it is still full.
        s.request();
        assert_eq!(s.due(at(t0, 2000), true), Some(SyncKind::Full));
        s.ran(SyncKind::Full, at(t0, 2000), true);
        assert_eq!(s.due(at(t0, 2500), true), None);
    }

    #[test]
    fn zero_min_interval_syncs_each_change_at_once() {
        let config = ScheduleConfig {
            min_interval: Duration::ZERO,
            max_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(1),
        };
        let mut s = SyncSchedule::new(config);
        let t0 = Instant::now();
        s.ran(SyncKind::Full, t0, true);
        s.request();
        assert_eq!(s.due(t0, true), Some(SyncKind::Changes));
    }

    #[test]
    fn a_long_full_sync_leaves_room_for_changes() {
        let (mut s, t0) = schedule();
        s.ran(SyncKind::Full, t0, true);
        // The full sync took 40 s, longer than the 30 s period.
        s.full_sync_finished(t0 + Duration::from_secs(40));
        s.request();
        assert_eq!(
            s.due(t0 + Duration::from_secs(41), true),
            Some(SyncKind::Changes),
            "a change goes first, as a partial sync"
        );
        assert_eq!(
            s.due(t0 + Duration::from_secs(71), true),
            Some(SyncKind::Full),
            "the next full one is a period after the last ended"
        );
    }
}
