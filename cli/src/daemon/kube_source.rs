//! The API-server source: kube-rs watchers for Services, EndpointSlices and this node's Node,
//! turned into handler calls.
//!
//! A watcher delivers `Init`, `InitApply(obj)`…, `InitDone` for every (re)list — at start, and
//! again after a 410 Gone or a dropped connection — then `Apply`/`Delete` events. Each kind keeps
//! its own store so that a re-list becomes only the differences (`update`, `delete` for objects
//! that vanished while the watch was down), and `on_*_synced` is called after the first list.
//! Watch errors are retried with backoff; the datapath is untouched while the API server is away.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use proxy_core::{EndpointSliceHandler, NodeHandler, PendingChanges, ServiceHandler};
use serde::de::DeserializeOwned;

use super::Shared;

/// The label selector kube-proxy uses: Services that are neither headless nor another proxy's.
pub(crate) const SERVICE_SELECTOR: &str =
    "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";

/// How one kind reaches the handlers.
pub(crate) trait Feed: Clone + PartialEq + Send + Sync + 'static {
    fn add(p: &mut PendingChanges, o: &Self);
    fn update(p: &mut PendingChanges, old: &Self, new: &Self);
    fn delete(p: &mut PendingChanges, o: &Self);
    fn synced(p: &mut PendingChanges);
}

impl Feed for Service {
    fn add(p: &mut PendingChanges, o: &Self) {
        p.on_service_add(o)
    }
    fn update(p: &mut PendingChanges, old: &Self, new: &Self) {
        p.on_service_update(old, new)
    }
    fn delete(p: &mut PendingChanges, o: &Self) {
        p.on_service_delete(o)
    }
    fn synced(p: &mut PendingChanges) {
        p.on_service_synced()
    }
}

impl Feed for EndpointSlice {
    fn add(p: &mut PendingChanges, o: &Self) {
        p.on_endpoint_slice_add(o)
    }
    fn update(p: &mut PendingChanges, old: &Self, new: &Self) {
        p.on_endpoint_slice_update(old, new)
    }
    fn delete(p: &mut PendingChanges, o: &Self) {
        p.on_endpoint_slice_delete(o)
    }
    fn synced(p: &mut PendingChanges) {
        p.on_endpoint_slice_synced()
    }
}

impl Feed for Node {
    fn add(p: &mut PendingChanges, o: &Self) {
        p.on_node_change(o)
    }
    fn update(p: &mut PendingChanges, _old: &Self, new: &Self) {
        p.on_node_change(new)
    }
    fn delete(p: &mut PendingChanges, o: &Self) {
        p.on_node_delete(o)
    }
    fn synced(p: &mut PendingChanges) {
        p.on_node_synced()
    }
}

/// One kind's view of the API: the objects as last delivered, and a re-list in progress.
#[derive(Debug)]
pub(crate) struct Store<K> {
    objects: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

fn key<K: Resource>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

impl<K: Feed + Resource> Store<K> {
    /// Applies one watcher event to the store and the trackers; returns whether anything changed.
    pub(crate) fn handle(&mut self, event: Event<K>, trackers: &mut [PendingChanges]) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&o), o);
                false
            }
            Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let mut changed = false;
                for (k, o) in &fresh {
                    match self.objects.get(k) {
                        None => {
                            trackers.iter_mut().for_each(|p| K::add(p, o));
                            changed = true;
                        }
                        Some(old) if old != o => {
                            trackers.iter_mut().for_each(|p| K::update(p, old, o));
                            changed = true;
                        }
                        Some(_) => {}
                    }
                }
                for (k, o) in &self.objects {
                    if !fresh.contains_key(k) {
                        trackers.iter_mut().for_each(|p| K::delete(p, o));
                        changed = true;
                    }
                }
                self.objects = fresh;
                if !self.synced {
                    self.synced = true;
                    trackers.iter_mut().for_each(K::synced);
                    changed = true;
                }
                changed
            }
            Event::Apply(o) => {
                let k = key(&o);
                match self.objects.get(&k) {
                    Some(old) if *old == o => return false,
                    Some(old) => trackers.iter_mut().for_each(|p| K::update(p, old, &o)),
                    None => trackers.iter_mut().for_each(|p| K::add(p, &o)),
                }
                self.objects.insert(k, o);
                true
            }
            Event::Delete(o) => {
                let k = key(&o);
                let last = self.objects.remove(&k).unwrap_or(o);
                trackers.iter_mut().for_each(|p| K::delete(p, &last));
                true
            }
        }
    }
}

/// Spawns a watcher for `api` feeding `shared`'s trackers.
fn spawn_watch<K>(api: Api<K>, config: watcher::Config, shared: Arc<Shared>)
where
    K: Feed + Resource + DeserializeOwned + std::fmt::Debug + Send + 'static,
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
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        shared,
    );
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
        s.handle(Event::InitApply(svc("a", "10.0.0.1")), &mut t);
        assert_eq!(t[0].pending_service_changes(), 0, "nothing before InitDone");
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
