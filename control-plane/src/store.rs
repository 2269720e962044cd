//! The object store: objects by resource, namespace and name, a monotonic resourceVersion, and a
//! bounded history of changes that watches replay from.
//!
//! Objects are kept as JSON (`serde_json::Value`): the server stores what clients send, like the
//! real one, and needs typed views only where it validates or allocates.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

/// A change, as a watch reports it. Cheap to clone: the object and its encoded line are shared by
/// every watcher, so a thousand watchers of a 1 MB object hold one copy, not a thousand.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The resource (`services`, `endpointslices`, …).
    pub resource: String,
    /// The object's namespace (empty for cluster-scoped).
    pub namespace: String,
    /// The object after the change (its last state for `DELETED`).
    pub object: Arc<Value>,
    /// The resourceVersion of the change.
    pub resource_version: u64,
    /// The watch line `{"type":…,"object":…}\n`, encoded once when the change is made.
    pub line: Bytes,
}

/// Encodes one watch line.
pub fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&serde_json::json!({"type": kind, "object": object}))
        .expect("a JSON value encodes");
    line.push(b'\n');
    Bytes::from(line)
}

/// One stored object with its JSON and its `ADDED` watch line, each encoded on first use and
/// shared by every list and watch that sends it.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The object.
    pub object: Arc<Value>,
    added: Arc<OnceLock<Bytes>>,
    json: Arc<OnceLock<Bytes>>,
}

impl Stored {
    fn new(object: Value) -> Self {
        Self {
            object: Arc::new(object),
            added: Arc::new(OnceLock::new()),
            json: Arc::new(OnceLock::new()),
        }
    }

    /// The object as JSON (encoded once per version of the object): what a list sends.
    pub fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| {
                Bytes::from(serde_json::to_vec(&*self.object).expect("a JSON value encodes"))
            })
            .clone()
    }

    /// The object as an `ADDED` watch line (encoded once).
    pub fn added_line(&self) -> Bytes {
        self.added
            .get_or_init(|| watch_line("ADDED", &self.object))
            .clone()
    }
}

/// A store operation that failed, with the HTTP status it maps to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// 404.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// The resource.
        resource: String,
        /// The name.
        name: String,
    },
    /// 409 on create.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// The resource.
        resource: String,
        /// The name.
        name: String,
    },
    /// 409 on update with a stale resourceVersion.
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")]
    Conflict {
        /// The resource.
        resource: String,
        /// The name.
        name: String,
    },
    /// 500: the durable store could not commit.
    #[error("storage error: {0}")]
    Storage(String),
    /// 410: the watch asked for history the store no longer keeps.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// What was asked.
        requested: u64,
        /// The oldest version still kept.
        oldest: u64,
    },
}

type Key = (String, String, String); // resource, namespace, name

/// Events buffered for live watchers before a slow one must catch up from the history.
pub const DEFAULT_FANOUT_CAPACITY: usize = 4096;

/// The store.
#[derive(Debug)]
pub struct Store {
    objects: BTreeMap<Key, Stored>,
    version: u64,
    history: VecDeque<WatchEvent>,
    history_limit: usize,
    events: broadcast::Sender<WatchEvent>,
    persist: Option<crate::persist::Persist>,
    /// Cluster IPs and node ports the stored Services hold, kept with every Service write.
    allocations: crate::allocations::ServiceAllocations,
}

impl Store {
    /// An empty store keeping `history_limit` past events for watches.
    pub fn new(history_limit: usize) -> Self {
        Self::with_fanout_capacity(history_limit, DEFAULT_FANOUT_CAPACITY)
    }

    /// An empty store whose live fan-out channel holds `fanout_capacity` events. A watcher that
    /// falls further behind than that is not dropped: it catches up from the history (see
    /// `api`), so a small capacity only trades memory for history lookups. Tests use a small one
    /// to exercise that path.
    pub fn with_fanout_capacity(history_limit: usize, fanout_capacity: usize) -> Self {
        let (events, _) = broadcast::channel(fanout_capacity.max(1));
        Self {
            objects: BTreeMap::new(),
            version: 1,
            history: VecDeque::new(),
            history_limit,
            events,
            persist: None,
            allocations: Default::default(),
        }
    }

    /// A store kept durable in `dir`: loads what is there (objects and resourceVersion) and commits
    /// every later write before it returns.
    pub fn open(history_limit: usize, dir: &std::path::Path) -> Result<Self, StoreError> {
        let (persist, loaded) =
            crate::persist::Persist::open(dir).map_err(|e| StoreError::Storage(e.to_string()))?;
        let mut store = Self::new(history_limit);
        for (key, object) in loaded.objects {
            let mut parts = key.splitn(3, '/');
            let (Some(r), Some(ns), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if r == "services" {
                store.allocations.add(&object);
            }
            store.objects.insert(
                (r.to_owned(), ns.to_owned(), n.to_owned()),
                Stored::new(object),
            );
        }
        store.version = loaded.version.max(store.version);
        store.persist = Some(persist);
        Ok(store)
    }

    /// Drops the watch history (as a restarted server without it would): any watch resumed from an
    /// earlier version is then told 410 and must re-list.
    pub fn forget_history(&mut self) {
        self.history.clear();
    }

    /// Whether objects have been loaded or created (a fresh store has none).
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    fn save(&self, key: &Key, object: Option<&Value>) -> Result<(), StoreError> {
        if let Some(p) = &self.persist {
            let k = format!("{}/{}/{}", key.0, key.1, key.2);
            p.write(&k, object, self.version)
                .map_err(|e| StoreError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// The current resourceVersion.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A receiver of every future change.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }

    fn bump(
        &mut self,
        kind: &'static str,
        resource: &str,
        namespace: &str,
        object: &mut Value,
    ) -> WatchEvent {
        self.version += 1;
        let rv = self.version;
        if kind != "DELETED" {
            object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        }
        let event = WatchEvent {
            kind,
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            line: watch_line(kind, object),
            object: Arc::new(object.clone()),
            resource_version: rv,
        };
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
        let _ = self.events.send(event.clone());
        event
    }

    /// Creates an object; `object.metadata.name` must be set.
    pub fn create(
        &mut self,
        resource: &str,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, StoreError> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (resource.to_owned(), namespace.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists {
                resource: resource.to_owned(),
                name,
            });
        }
        if !namespace.is_empty() {
            object["metadata"]["namespace"] = Value::String(namespace.to_owned());
        }
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.version + 1);
        object["metadata"]["uid"] = Value::String(uid);
        self.bump("ADDED", resource, namespace, &mut object);
        self.save(&key, Some(&object))?;
        if resource == "services" {
            self.allocations.add(&object);
        }
        self.objects.insert(key, Stored::new(object.clone()));
        Ok(object)
    }

    /// Replaces an object. A resourceVersion in `object` must match the stored one (optimistic
    /// concurrency); none means "whatever is there".
    pub fn update(
        &mut self,
        resource: &str,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Result<Value, StoreError> {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        let Some(current) = self.objects.get(&key) else {
            return Err(StoreError::NotFound {
                resource: resource.to_owned(),
                name: name.to_owned(),
            });
        };
        if let Some(rv) = object["metadata"]["resourceVersion"].as_str() {
            if !rv.is_empty() && Some(rv) != current.object["metadata"]["resourceVersion"].as_str()
            {
                return Err(StoreError::Conflict {
                    resource: resource.to_owned(),
                    name: name.to_owned(),
                });
            }
        }
        object["metadata"]["uid"] = current.object["metadata"]["uid"].clone();
        if !namespace.is_empty() {
            object["metadata"]["namespace"] = Value::String(namespace.to_owned());
        }
        self.bump("MODIFIED", resource, namespace, &mut object);
        self.save(&key, Some(&object))?;
        let new = Stored::new(object.clone());
        if let Some(old) = self.objects.insert(key, new) {
            if resource == "services" {
                self.allocations.remove(&old.object);
                self.allocations.add(&object);
            }
        }
        Ok(object)
    }

    /// Deletes an object, returning its last state.
    pub fn delete(
        &mut self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, StoreError> {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        let Some(stored) = self.objects.remove(&key) else {
            return Err(StoreError::NotFound {
                resource: resource.to_owned(),
                name: name.to_owned(),
            });
        };
        let mut object = Arc::unwrap_or_clone(stored.object);
        if resource == "services" {
            self.allocations.remove(&object);
        }
        self.bump("DELETED", resource, namespace, &mut object);
        self.save(&key, None)?;
        Ok(object)
    }

    /// One object.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Result<Value, StoreError> {
        self.objects
            .get(&(resource.to_owned(), namespace.to_owned(), name.to_owned()))
            .map(|s| (*s.object).clone())
            .ok_or_else(|| StoreError::NotFound {
                resource: resource.to_owned(),
                name: name.to_owned(),
            })
    }

    /// What the stored Services hold (cluster IPs, node ports).
    pub fn allocations(&self) -> &crate::allocations::ServiceAllocations {
        &self.allocations
    }

    /// As [`allocations`](Self::allocations), to allocate from (the search cursors move).
    pub fn allocations_mut(&mut self) -> &mut crate::allocations::ServiceAllocations {
        &mut self.allocations
    }

    /// The stored objects of `resource` in `namespace` (`None`: all), in key order: a range of
    /// the map, not a walk over every resource.
    fn scoped<'a>(
        &'a self,
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Stored> + 'a {
        let start = (
            resource.to_owned(),
            namespace.unwrap_or_default().to_owned(),
            String::new(),
        );
        self.objects
            .range(start..)
            .take_while(move |((r, ns, _), _)| r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, s)| s)
    }

    /// Objects of `resource`, in `namespace` (`None`: all), matching `filter`.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        filter: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.scoped(resource, namespace)
            .map(|s| &*s.object)
            .filter(|v| filter(v))
            .cloned()
            .collect()
    }

    /// Objects of `resource` in `namespace` (`None`: all), shared, not copied: what a watch
    /// replays from.
    pub fn list_shared(&self, resource: &str, namespace: Option<&str>) -> Vec<Stored> {
        self.scoped(resource, namespace).cloned().collect()
    }

    /// Events after `since` (a resourceVersion), or 410 when history no longer reaches back that far.
    pub fn events_since(&self, since: u64) -> Result<Vec<WatchEvent>, StoreError> {
        let oldest_kept = self
            .history
            .front()
            .map_or(self.version, |e| e.resource_version - 1);
        if since < oldest_kept {
            return Err(StoreError::Gone {
                requested: since,
                oldest: oldest_kept,
            });
        }
        Ok(self
            .history
            .iter()
            .filter(|e| e.resource_version > since)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {}})
    }

    #[test]
    fn versions_increase_and_conflicts_are_detected() {
        let mut s = Store::new(100);
        let a = s.create("services", "ns", svc("a")).unwrap();
        let rv1 = a["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(matches!(
            s.create("services", "ns", svc("a")),
            Err(StoreError::AlreadyExists { .. })
        ));
        let mut stale = a.clone();
        let b = s.update("services", "ns", "a", a).unwrap();
        assert_ne!(b["metadata"]["resourceVersion"].as_str().unwrap(), rv1);
        stale["spec"]["x"] = json!(1);
        assert!(matches!(
            s.update("services", "ns", "a", stale),
            Err(StoreError::Conflict { .. })
        ));
        s.delete("services", "ns", "a").unwrap();
        assert!(matches!(
            s.get("services", "ns", "a"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn watch_history_and_gone() {
        let mut s = Store::new(3);
        for n in ["a", "b", "c", "d"] {
            s.create("services", "ns", svc(n)).unwrap();
        }
        let latest = s.version();
        assert_eq!(s.events_since(latest - 1).unwrap().len(), 1);
        assert_eq!(s.events_since(latest - 3).unwrap().len(), 3);
        assert!(matches!(s.events_since(1), Err(StoreError::Gone { .. })));
    }

    #[test]
    fn service_allocations_follow_writes() {
        let mut s = Store::new(100);
        let mut a = svc("a");
        a["spec"] = json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80, "nodePort": 30001}]});
        let created = s.create("services", "ns", a).unwrap();
        assert!(s.allocations().cluster_ip_in_use("10.96.0.5"));
        assert_eq!(s.allocations().node_port_holders(30001), 1);
        let mut changed = created.clone();
        changed["spec"]["ports"][0]["nodePort"] = json!(30002);
        s.update("services", "ns", "a", changed).unwrap();
        assert_eq!(s.allocations().node_port_holders(30001), 0, "released");
        assert_eq!(s.allocations().node_port_holders(30002), 1);
        // Other resources do not count.
        s.create("endpointslices", "ns", a_slice()).unwrap();
        s.delete("services", "ns", "a").unwrap();
        assert!(!s.allocations().cluster_ip_in_use("10.96.0.5"));
        assert_eq!(s.allocations().node_port_holders(30002), 0);
        assert_eq!(s.list("endpointslices", None, |_| true).len(), 1);
        assert_eq!(s.list("services", Some("ns"), |_| true).len(), 0);
    }

    fn a_slice() -> Value {
        json!({"metadata": {"name": "a-0"}, "spec": {"clusterIP": "10.96.0.9"}})
    }
}
