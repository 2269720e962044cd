//! The `--manifests` source: polls a file or directory and turns what changed between two loads
//! into handler events, as an API watch would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fixtures::Manifests;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::Metadata;
use proxy_core::{EndpointSliceHandler, NodeHandler, PendingChanges, ServiceHandler};

use super::Shared;

/// How often the manifests are re-read.
const POLL: Duration = Duration::from_millis(500);

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
#[derive(Default)]
struct Snapshot {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    nodes: BTreeMap<String, Node>,
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
    n
}

impl FileSource {
    /// Loads once (an error here is returned: bad input at start), then polls on a thread.
    pub(crate) fn start(path: PathBuf, shared: Arc<Shared>) -> anyhow::Result<Self> {
        let first: Snapshot = fixtures::load_path(&path)?.into();
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
        let thread = std::thread::Builder::new()
            .name("manifests".into())
            .spawn(move || {
                let mut current = first;
                while !shared.stopping() {
                    std::thread::sleep(POLL);
                    let next: Snapshot = match fixtures::load_path(&path) {
                        Ok(m) => m.into(),
                        Err(e) => {
                            // Keep what was loaded: a half-written file must not remove Services.
                            tracing::error!(
                                "cannot load manifests, keeping the last good ones: {e}"
                            );
                            continue;
                        }
                    };
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
            })?;
        Ok(Self { thread })
    }

    /// Waits for the polling thread to notice shutdown.
    pub(crate) fn stop(self) {
        let _ = self.thread.join();
    }
}
