//! The `--manifests` source: watches a file or directory and turns what changed into handler
//! events, as an API watch would.
//!
//! What it does with each kind of edit (docs/daemon.md has the table):
//!
//! - It watches with inotify (`notify`) and re-reads only the files an event named, once they have
//!   been quiet for [`SETTLE`]; a stat of every file every [`RESCAN`] catches what inotify missed.
//!   An idle daemon parses nothing.
//! - A file that fails to load (half-written, not YAML, too large) keeps its last good objects;
//!   the error is logged once per change of the file, not at every look.
//! - A file that turns empty, or disappears, is what `: > f`, `cat new > f` or `cp` do first: its
//!   objects are removed only once it has stayed so for [`EMPTY_GRACE`]. A file rewritten in time
//!   never loses its rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use fixtures::Manifests;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::Metadata;
use proxy_core::{
    EndpointSliceHandler, NodeHandler, PendingChanges, ServiceCidrHandler, ServiceHandler,
};

use super::Shared;

/// How long a file must be quiet after an event before it is read.
pub(crate) const SETTLE: Duration = Duration::from_millis(200);
/// How long a file must stay empty (or gone) before its objects are removed.
pub(crate) const EMPTY_GRACE: Duration = Duration::from_secs(2);
/// How often every file is stat'ed in case inotify missed something (a full parse only for files
/// whose size or modification time changed).
const RESCAN: Duration = Duration::from_secs(2);

/// The running source.
#[derive(Debug)]
pub(crate) struct FileSource {
    thread: JoinHandle<()>,
}

fn key<T: Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
    o: &T,
) -> String {
    let m = o.metadata();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or_default()
    )
}

/// The objects of one load, by key.
#[derive(Clone, Default)]
struct Snapshot {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    nodes: BTreeMap<String, Node>,
    service_cidrs: BTreeMap<String, ServiceCIDR>,
}

impl From<Manifests> for Snapshot {
    fn from(m: Manifests) -> Self {
        Self {
            services: m.services.into_iter().map(|s| (key(&s), s)).collect(),
            slices: m
                .endpoint_slices
                .into_iter()
                .map(|s| (key(&s), s))
                .collect(),
            nodes: m.nodes.into_iter().map(|n| (key(&n), n)).collect(),
            service_cidrs: m.service_cidrs.into_iter().map(|c| (key(&c), c)).collect(),
        }
    }
}

/// One difference between two loads.
enum Event<'a, T> {
    Add(&'a T),
    Update(&'a T, &'a T),
    Delete(&'a T),
}

/// Calls `f` for what differs between `old` and `new`; returns the count.
fn diff<'a, T: PartialEq>(
    old: &'a BTreeMap<String, T>,
    new: &'a BTreeMap<String, T>,
    mut f: impl FnMut(Event<'a, T>),
) -> usize {
    let mut n = 0;
    for (k, v) in new {
        match old.get(k) {
            None => {
                f(Event::Add(v));
                n += 1;
            }
            Some(o) if o != v => {
                f(Event::Update(o, v));
                n += 1;
            }
            Some(_) => {}
        }
    }
    for (k, v) in old {
        if !new.contains_key(k) {
            f(Event::Delete(v));
            n += 1;
        }
    }
    n
}

fn apply(p: &mut PendingChanges, old: &Snapshot, new: &Snapshot) -> usize {
    let mut n = diff(&old.services, &new.services, |e| match e {
        Event::Add(s) => p.on_service_add(s),
        Event::Update(a, b) => p.on_service_update(a, b),
        Event::Delete(s) => p.on_service_delete(s),
    });
    n += diff(&old.slices, &new.slices, |e| match e {
        Event::Add(s) => p.on_endpoint_slice_add(s),
        Event::Update(a, b) => p.on_endpoint_slice_update(a, b),
        Event::Delete(s) => p.on_endpoint_slice_delete(s),
    });
    n += diff(&old.nodes, &new.nodes, |e| match e {
        Event::Add(x) | Event::Update(_, x) => p.on_node_change(x),
        Event::Delete(x) => p.on_node_delete(x),
    });
    n += diff(&old.service_cidrs, &new.service_cidrs, |e| match e {
        Event::Add(x) | Event::Update(_, x) => p.on_service_cidr_change(x),
        Event::Delete(x) => p.on_service_cidr_delete(x),
    });
    n
}

/// What the source knows of one file.
struct FileState {
    /// Its objects as last accepted.
    objects: Snapshot,
    /// Size and modification time when last read, to notice changes inotify missed.
    stamp: Option<(u64, SystemTime)>,
    /// The last load error, so it is logged once per change.
    last_error: Option<String>,
    /// Since when the file has been empty or gone while its objects are kept.
    emptied_since: Option<Instant>,
}

fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// The watched files and their objects.
struct Files {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl Files {
    /// The union of every file's objects (a later file wins a duplicate key).
    fn combined(&self) -> Snapshot {
        let mut all = Snapshot::default();
        for f in self.files.values() {
            all.services.extend(
                f.objects
                    .services
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            all.slices
                .extend(f.objects.slices.iter().map(|(k, v)| (k.clone(), v.clone())));
            all.nodes
                .extend(f.objects.nodes.iter().map(|(k, v)| (k.clone(), v.clone())));
            all.service_cidrs.extend(
                f.objects
                    .service_cidrs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        all
    }

    /// Whether `path` is one of the watched manifests.
    fn watches(&self, path: &Path) -> bool {
        if self.root.is_dir() {
            path.parent() == Some(self.root.as_path()) && fixtures::is_manifest_file(path)
        } else {
            path == self.root
        }
    }

    /// Re-reads one file; true when its accepted objects changed. `now` decides the grace of an
    /// emptied file.
    fn reload(&mut self, path: &Path, now: Instant) -> bool {
        let exists = path.exists();
        let state = self
            .files
            .entry(path.to_path_buf())
            .or_insert_with(|| FileState {
                objects: Snapshot::default(),
                stamp: None,
                last_error: None,
                emptied_since: None,
            });
        state.stamp = stamp(path);
        let loaded: Snapshot = if exists {
            match fixtures::load_path(path) {
                Ok(mut m) => {
                    state.last_error = None;
                    m.warn_duplicates();
                    for w in &m.warnings {
                        tracing::warn!("{w}");
                    }
                    m.into()
                }
                Err(e) => {
                    let text = e.to_string();
                    if state.last_error.as_deref() != Some(text.as_str()) {
                        // Keep what was loaded: a half-written file must not remove Services.
                        tracing::error!(
                            "cannot load manifests, keeping the last good ones: {text}"
                        );
                        state.last_error = Some(text);
                    }
                    return false;
                }
            }
        } else {
            Snapshot::default()
        };
        let empty = loaded.services.is_empty()
            && loaded.slices.is_empty()
            && loaded.nodes.is_empty()
            && loaded.service_cidrs.is_empty();
        let had = !(state.objects.services.is_empty()
            && state.objects.slices.is_empty()
            && state.objects.nodes.is_empty()
            && state.objects.service_cidrs.is_empty());
        if empty && had {
            let since = *state.emptied_since.get_or_insert_with(|| {
                tracing::info!(
                    "{} is {}; keeping its objects unless it stays so for {:?}",
                    path.display(),
                    if exists { "empty" } else { "gone" },
                    EMPTY_GRACE
                );
                now
            });
            if now.duration_since(since) < EMPTY_GRACE {
                return false;
            }
        }
        state.emptied_since = None;
        let changed = state.objects.services != loaded.services
            || state.objects.slices != loaded.slices
            || state.objects.nodes != loaded.nodes
            || state.objects.service_cidrs != loaded.service_cidrs;
        state.objects = loaded;
        if !exists {
            self.files.remove(path);
        }
        changed
    }

    /// The files whose stamp differs from the last read, new files, and vanished ones.
    fn stale(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(p, f)| stamp(p) != f.stamp || f.emptied_since.is_some())
            .map(|(p, _)| p.clone())
            .collect();
        if let Ok(now) = fixtures::manifest_files(&self.root) {
            out.extend(now.into_iter().filter(|p| !self.files.contains_key(p)));
        }
        out
    }

    /// When the earliest emptied file's grace ends.
    fn next_grace_end(&self) -> Option<Instant> {
        self.files
            .values()
            .filter_map(|f| f.emptied_since)
            .min()
            .map(|t| t + EMPTY_GRACE)
    }
}

impl FileSource {
    /// Loads once (an error here is returned: bad input at start), then watches on a thread.
    pub(crate) fn start(path: PathBuf, shared: Arc<Shared>) -> anyhow::Result<Self> {
        let mut files = Files {
            root: path.clone(),
            files: BTreeMap::new(),
        };
        for file in fixtures::manifest_files(&path)? {
            let objects: Snapshot = fixtures::load_path(&file)?.into();
            files.files.insert(
                file.clone(),
                FileState {
                    objects,
                    stamp: stamp(&file),
                    last_error: None,
                    emptied_since: None,
                },
            );
        }
        let first = files.combined();
        {
            let mut trackers = shared.pending.lock().expect("pending lock");
            for p in trackers.iter_mut() {
                apply(p, &Snapshot::default(), &first);
                p.on_service_synced();
                p.on_endpoint_slice_synced();
                p.on_node_synced();
            }
        }
        shared.queued(&shared.pending.lock().expect("pending lock"));
        shared.notify();

        let (tx, events) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if let Ok(e) = e {
                let _ = tx.send(e.paths);
            }
        })?;
        // Watch the directory (a single file's too: editors replace files by renaming onto them).
        let dir = if path.is_dir() {
            path.clone()
        } else {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)?;

        let thread = std::thread::Builder::new()
            .name("manifests".into())
            .spawn(move || {
                let _watcher = watcher; // dropped (unwatched) when the thread ends
                watch(files, first, events, &shared);
            })?;
        Ok(Self { thread })
    }

    /// Waits for the watching thread to notice shutdown.
    pub(crate) fn stop(self) {
        let _ = self.thread.join();
    }
}

/// The watch loop: collects events, re-reads settled files, applies the difference.
fn watch(
    mut files: Files,
    mut current: Snapshot,
    events: mpsc::Receiver<Vec<PathBuf>>,
    shared: &Shared,
) {
    let mut dirty: BTreeMap<PathBuf, Instant> = BTreeMap::new();
    let mut next_rescan = Instant::now() + RESCAN;
    while !shared.stopping() {
        let now = Instant::now();
        let mut wake = next_rescan;
        if let Some(t) = dirty.values().map(|t| *t + SETTLE).min() {
            wake = wake.min(t);
        }
        if let Some(t) = files.next_grace_end() {
            wake = wake.min(t);
        }
        // Wake at least every half second to notice shutdown.
        let timeout = wake
            .saturating_duration_since(now)
            .min(Duration::from_millis(500));
        match events.recv_timeout(timeout) {
            Ok(paths) => {
                for p in paths.into_iter().filter(|p| files.watches(p)) {
                    dirty.insert(p, Instant::now());
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let mut due: BTreeSet<PathBuf> = dirty
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= SETTLE)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &due {
            dirty.remove(p);
        }
        if files.next_grace_end().is_some_and(|t| now >= t) {
            due.extend(
                files
                    .files
                    .iter()
                    .filter(|(_, f)| f.emptied_since.is_some())
                    .map(|(p, _)| p.clone()),
            );
        }
        if now >= next_rescan {
            due.extend(files.stale().into_iter().filter(|p| !dirty.contains_key(p)));
            next_rescan = now + RESCAN;
        }
        let mut changed_files = 0;
        for p in &due {
            if files.reload(p, now) {
                changed_files += 1;
            }
        }
        if changed_files == 0 {
            continue;
        }
        let next = files.combined();
        let changed = {
            let mut trackers = shared.pending.lock().expect("pending lock");
            let changed = trackers
                .iter_mut()
                .map(|p| apply(p, &current, &next))
                .max()
                .unwrap_or(0);
            if changed > 0 {
                shared.queued(&trackers);
            }
            changed
        };
        if changed > 0 {
            tracing::debug!("{changed} objects changed in the manifests");
            shared.notify();
        }
        current = next;
    }
}
