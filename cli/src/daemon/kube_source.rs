//! The API-server source: kube-rs watchers for Services, EndpointSlices and this node's Node,
//! turned into handler calls.
//!
//! A watcher delivers `Init`, `InitApply(obj)`…, `InitDone` for every (re)list — at start, and
//! again after a 410 Gone or a dropped connection — then `Apply`/`Delete` events. Each kind keeps
//! its own store so that a re-list becomes only the differences (`update`, `delete` for objects
//! that vanished while the watch was down), and `on_*_synced` is called after the first list.
//! Watch errors are retried with backoff; the datapath is untouched while the API server is away.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use proxy_core::{
    EndpointSliceHandler, NodeHandler, PendingChanges, ServiceCidrHandler, ServiceHandler,
};
use serde::de::DeserializeOwned;

use super::Shared;

/// The label selector kube-proxy uses: Services that are neither headless nor another proxy's.
pub(crate) const SERVICE_SELECTOR: &str =
    "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";

/// How one kind reaches the handlers.
pub(crate) trait Feed: Clone + PartialEq + Send + Sync + 'static {
    /// A new or changed object (the handlers know its previous state).
    fn upsert(p: &mut PendingChanges, o: &Self);
    fn delete(p: &mut PendingChanges, o: &Self);
    fn synced(p: &mut PendingChanges);
}

impl Feed for Service {
    fn upsert(p: &mut PendingChanges, o: &Self) {
        p.on_service_add(o)
    }
    fn delete(p: &mut PendingChanges, o: &Self) {
        p.on_service_delete(o)
    }
    fn synced(p: &mut PendingChanges) {
        p.on_service_synced()
    }
}

impl Feed for EndpointSlice {
    fn upsert(p: &mut PendingChanges, o: &Self) {
        p.on_endpoint_slice_add(o)
    }
    fn delete(p: &mut PendingChanges, o: &Self) {
        p.on_endpoint_slice_delete(o)
    }
    fn synced(p: &mut PendingChanges) {
        p.on_endpoint_slice_synced()
    }
}

impl Feed for Node {
    fn upsert(p: &mut PendingChanges, o: &Self) {
        p.on_node_change(o)
    }
    fn delete(p: &mut PendingChanges, o: &Self) {
        p.on_node_delete(o)
    }
    fn synced(p: &mut PendingChanges) {
        p.on_node_synced()
    }
}

impl Feed for ServiceCIDR {
    fn upsert(p: &mut PendingChanges, o: &Self) {
        p.on_service_cidr_change(o)
    }
    fn delete(p: &mut PendingChanges, o: &Self) {
        p.on_service_cidr_delete(o)
    }
    fn synced(_: &mut PendingChanges) {
        // The first sync does not wait for ServiceCIDRs (upstream's does not either): without
        // them, only the drop of unallocated cluster IPs is missing.
    }
}

/// One kind's view of the API: a fingerprint of each object as last delivered, and the keys a
/// re-list in progress has seen.
///
/// The objects themselves are not kept: the handlers keep what they converted them to (and take
/// the previous state of a change from it), so a fingerprint is enough to drop an event that
/// changes nothing and, after a re-list, to find what vanished. At 20,000 Services × 10 endpoints
/// the typed objects were 187 MiB of heap (twice that while a re-list was buffered); the
/// fingerprints are a few MiB.
#[derive(Debug)]
pub(crate) struct Store<K> {
    objects: BTreeMap<String, u64>,
    relist: Option<HashSet<String>>,
    synced: bool,
    kind: std::marker::PhantomData<fn() -> K>,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            relist: None,
            synced: false,
            kind: std::marker::PhantomData,
        }
    }
}

fn key<K: Resource>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// A hash of the object's JSON: equal for an object delivered again unchanged.
fn fingerprint<K: serde::Serialize>(o: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match serde_json::to_vec(o) {
        Ok(bytes) => bytes.hash(&mut h),
        // Cannot happen for API types; a fresh value makes the event count as a change.
        Err(_) => std::time::SystemTime::now().hash(&mut h),
    }
    h.finish()
}

impl<K: Feed + Resource + serde::Serialize + Default> Store<K> {
    /// Records `o` as delivered; hands it to the handlers unless it is unchanged.
    fn upsert(&mut self, o: &K, trackers: &mut [PendingChanges]) -> bool {
        let fp = fingerprint(o);
        if self.objects.insert(key(o), fp) == Some(fp) {
            return false;
        }
        trackers.iter_mut().for_each(|p| K::upsert(p, o));
        true
    }

    /// Applies one watcher event to the store and the trackers; returns whether anything changed.
    /// A re-list's objects are applied as they arrive (like watch events: each is a complete
    /// object); at its end, objects it did not deliver are deleted.
    pub(crate) fn handle(&mut self, event: Event<K>, trackers: &mut [PendingChanges]) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(HashSet::new());
                false
            }
            Event::InitApply(o) => {
                self.relist.get_or_insert_with(HashSet::new).insert(key(&o));
                self.upsert(&o, trackers)
            }
            Event::InitDone => {
                let seen = self.relist.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .objects
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                let mut changed = !gone.is_empty();
                for k in gone {
                    self.objects.remove(&k);
                    // Only the name is needed: the handlers know what it was.
                    let mut last = K::default();
                    let (ns, name) = k.split_once('/').unwrap_or(("", &k));
                    last.meta_mut().namespace = (!ns.is_empty()).then(|| ns.to_owned());
                    last.meta_mut().name = Some(name.to_owned());
                    trackers.iter_mut().for_each(|p| K::delete(p, &last));
                }
                if !self.synced {
                    self.synced = true;
                    trackers.iter_mut().for_each(K::synced);
                    changed = true;
                }
                changed
            }
            Event::Apply(o) => self.upsert(&o, trackers),
            Event::Delete(o) => {
                self.objects.remove(&key(&o));
                trackers.iter_mut().for_each(|p| K::delete(p, &o));
                true
            }
        }
    }
}

/// Spawns a watcher for `api` feeding `shared`'s trackers.
fn spawn_watch<K>(api: Api<K>, config: watcher::Config, shared: Arc<Shared>)
where
    K: Feed
        + Resource
        + DeserializeOwned
        + serde::Serialize
        + Default
        + std::fmt::Debug
        + Send
        + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let mut store = Store::<K>::default();
        let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        while let Some(item) = stream.next().await {
            if shared.stopping() {
                break;
            }
            match item {
                Ok(event) => {
                    let changed = {
                        let mut trackers = shared.pending.lock().expect("pending lock");
                        let changed = store.handle(event, &mut trackers);
                        if changed {
                            shared.queued(&trackers);
                        }
                        changed
                    };
                    if changed {
                        shared.notify();
                    }
                }
                // Retried with backoff by the stream; the rules stay as they are meanwhile.
                Err(e) => tracing::warn!("watch of {} failed: {e}", K::kind(&Default::default())),
            }
        }
    });
}

/// The Service label selector: kube-proxy's, or only this proxy's Services with a proxy name.
pub(crate) fn service_selector(proxy_name: Option<&str>) -> String {
    match proxy_name {
        None => SERVICE_SELECTOR.to_owned(),
        Some(name) => {
            format!(
                "!service.kubernetes.io/headless,service.kubernetes.io/service-proxy-name={name}"
            )
        }
    }
}

/// Starts the three watchers on the current tokio runtime.
pub(crate) fn start(client: Client, node_name: &str, service_selector: &str, shared: Arc<Shared>) {
    spawn_watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(service_selector),
        Arc::clone(&shared),
    );
    spawn_watch(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        Arc::clone(&shared),
    );
    spawn_watch(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        Arc::clone(&shared),
    );
    // ServiceCIDRs (networking.k8s.io/v1, GA in 1.33): watched when the API server serves them;
    // an older one answers 404 once, and that is all.
    tokio::spawn(async move {
        let api = Api::<ServiceCIDR>::all(client);
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Ok(_) => spawn_watch(api, watcher::Config::default(), shared),
            Err(e) => tracing::info!(
                "not watching ServiceCIDRs ({e}): traffic to unallocated cluster IPs is not dropped"
            ),
        }
    });
}

#[cfg(test)]
mod tests {
    use fixtures::builder::ServiceBuilder;
    use proxy_core::{IpFamily, ServiceFilter};

    use super::*;

    fn trackers() -> Vec<PendingChanges> {
        vec![PendingChanges::new(
            IpFamily::V4,
            "n",
            ServiceFilter::default(),
        )]
    }

    fn svc(name: &str, ip: &str) -> Service {
        ServiceBuilder::new("ns", name, ip)
            .port("p", 80, "TCP")
            .build()
    }

    #[test]
    fn first_list_adds_and_marks_synced() {
        let mut t = trackers();
        let mut s = Store::<Service>::default();
        s.handle(Event::Init, &mut t);
        assert!(s.handle(Event::InitApply(svc("a", "10.0.0.1")), &mut t));
        assert_eq!(t[0].pending_service_changes(), 1, "recorded as it arrives");
        assert!(!t[0].is_synced(), "not synced before InitDone");
        assert!(s.handle(Event::InitDone, &mut t));
        assert_eq!(t[0].pending_service_changes(), 1);
        t[0].on_endpoint_slice_synced();
        assert!(t[0].is_synced());
    }

    #[test]
    fn relist_after_a_gap_yields_only_differences() {
        let mut t = trackers();
        let mut s = Store::<Service>::default();
        for e in [
            Event::Init,
            Event::InitApply(svc("a", "10.0.0.1")),
            Event::InitApply(svc("b", "10.0.0.2")),
            Event::InitDone,
        ] {
            s.handle(e, &mut t);
        }
        let mut state = proxy_core::ProxyState::new(IpFamily::V4, proxy_core::NodeInfo::named("n"));
        state.apply(&mut t[0]);
        // The watch broke; meanwhile a was deleted and c created; b is unchanged.
        for e in [
            Event::Init,
            Event::InitApply(svc("b", "10.0.0.2")),
            Event::InitApply(svc("c", "10.0.0.3")),
        ] {
            s.handle(e, &mut t);
        }
        // Until the re-list ends, nothing is deleted.
        assert!(s.handle(Event::InitDone, &mut t));
        let diff = state.apply(&mut t[0]);
        let added: Vec<String> = diff.added.iter().map(|n| n.service.name.clone()).collect();
        let removed: Vec<String> = diff
            .removed
            .iter()
            .map(|c| c.name.service.name.clone())
            .collect();
        assert_eq!(added, ["c"]);
        assert_eq!(removed, ["a"]);
        assert!(diff.changed.is_empty());
    }

    #[test]
    fn service_selector_follows_the_proxy_name() {
        assert_eq!(
            service_selector(None),
            "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
        );
        assert_eq!(
            service_selector(Some("kproxy")),
            "!service.kubernetes.io/headless,service.kubernetes.io/service-proxy-name=kproxy"
        );
    }

    #[test]
    fn apply_of_an_unchanged_object_is_nothing() {
        let mut t = trackers();
        let mut s = Store::<Service>::default();
        assert!(s.handle(Event::Apply(svc("a", "10.0.0.1")), &mut t));
        assert!(!s.handle(Event::Apply(svc("a", "10.0.0.1")), &mut t));
        assert!(s.handle(Event::Delete(svc("a", "10.0.0.1")), &mut t));
    }

    /// A minimal API server: lists from fixed objects, watches from a channel the test feeds.
    mod fake_api {
        use std::net::SocketAddr;

        use axum::body::Body;
        use axum::http::Uri;
        use axum::Router;
        use tokio::sync::broadcast;

        pub(super) struct FakeApi {
            pub(super) addr: SocketAddr,
            pub(super) events: broadcast::Sender<(String, String)>,
        }

        pub(super) async fn start(
            lists: Vec<(&'static str, &'static str, Vec<serde_json::Value>)>,
        ) -> FakeApi {
            let (events, _) = broadcast::channel::<(String, String)>(64);
            let tx = events.clone();
            let app = Router::new().fallback(move |uri: Uri| {
                let tx = tx.clone();
                let lists = lists.clone();
                async move {
                    let path = uri.path().to_owned();
                    let query = uri.query().unwrap_or_default().to_owned();
                    if query.contains("watch=true") || query.contains("watch=1") {
                        let rx = tx.subscribe();
                        let stream = futures::stream::unfold(rx, move |mut rx| {
                            let path = path.clone();
                            async move {
                                loop {
                                    match rx.recv().await {
                                        Ok((p, line)) if p == path => {
                                            return Some((
                                                Ok::<_, std::io::Error>(line + "\n"),
                                                rx,
                                            ));
                                        }
                                        Ok(_) => continue,
                                        Err(_) => return None,
                                    }
                                }
                            }
                        });
                        return axum::response::Response::new(Body::from_stream(stream));
                    }
                    let (kind, items) = lists
                        .iter()
                        .find(|(p, _, _)| *p == path)
                        .map(|(_, k, items)| (*k, items.clone()))
                        .unwrap_or(("List", Vec::new()));
                    let body = serde_json::json!({
                        "apiVersion": "v1", "kind": kind,
                        "metadata": {"resourceVersion": "1"},
                        "items": items,
                    });
                    axum::response::Response::new(Body::from(body.to_string()))
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            FakeApi { addr, events }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_list_then_follow_the_api_server() {
        use fixtures::builder::{EndpointBuilder, NodeBuilder, SliceBuilder};

        let svc_a = serde_json::to_value(svc("a", "10.0.0.1")).unwrap();
        let slice = serde_json::to_value(
            SliceBuilder::new("ns", "a-1", "a")
                .port("p", 8080, "TCP")
                .endpoint(EndpointBuilder::ready("10.1.0.1"))
                .build(),
        )
        .unwrap();
        let node = serde_json::to_value(NodeBuilder::new("n").zone("z1").build()).unwrap();
        let api = fake_api::start(vec![
            ("/api/v1/services", "ServiceList", vec![svc_a]),
            (
                "/apis/discovery.k8s.io/v1/endpointslices",
                "EndpointSliceList",
                vec![slice],
            ),
            ("/api/v1/nodes", "NodeList", vec![node]),
        ])
        .await;
        let config = kube::Config::new(format!("http://{}", api.addr).parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let shared = Arc::new(Shared::new(trackers(), std::time::Duration::from_secs(60)));
        start(client, "n", &service_selector(None), Arc::clone(&shared));

        let wait = |what: &str, f: &dyn Fn(&PendingChanges) -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if f(&shared.pending.lock().unwrap()[0]) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "timed out waiting for {what}"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        tokio::task::block_in_place(|| {
            wait("the initial lists", &|p| {
                p.is_synced()
                    && p.node_synced()
                    && p.pending_service_changes() == 1
                    && p.pending_endpoint_changes() == 1
            })
        });

        // A Service created after the list arrives through the watch.
        // Watch events carry a resourceVersion, which the watcher resumes from.
        let mut b = svc("b", "10.0.0.2");
        b.metadata.resource_version = Some("2".into());
        let added =
            serde_json::json!({"type": "ADDED", "object": serde_json::to_value(b).unwrap()});
        // The watch may not be open yet: resend until it is seen.
        tokio::task::block_in_place(|| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let _ = api
                    .events
                    .send(("/api/v1/services".into(), added.to_string()));
                std::thread::sleep(std::time::Duration::from_millis(100));
                if shared.pending.lock().unwrap()[0].pending_service_changes() == 2 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the watch event never arrived"
                );
            }
        });
        shared
            .shutdown
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
