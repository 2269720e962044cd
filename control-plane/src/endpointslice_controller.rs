//! The EndpointSlice controller: for every Service with a selector, slices listing the matching
//! Pods, kept up to date as Services, Pods and Nodes change.
//!
//! Endpoint conditions follow upstream: `serving` is the Pod's Ready condition, `terminating` is a
//! set deletionTimestamp, and `ready` is serving and not terminating. Named target ports are
//! resolved from the Pod's container ports; `zone` comes from the Node's
//! `topology.kubernetes.io/zone` label; a slice holds at most 100 endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::api::App;
use crate::selector::LabelSelector;
use crate::store::Store;

/// The controller's name, as it labels the slices it manages.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// Endpoints per slice, upstream's default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

fn selector_of(service: &Value) -> Option<LabelSelector> {
    let map = service["spec"]["selector"].as_object()?;
    if map.is_empty() {
        return None;
    }
    let text: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    LabelSelector::parse(&text.join(",")).ok()
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The target port of `port` on `pod`: a number, or a container port looked up by name.
fn target_port(port: &Value, pod: &Value) -> Option<i64> {
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64()),
        _ => port["port"].as_i64(),
    }
}

/// The slices `service` should have, given the Pods and Nodes of the store.
pub fn desired_slices(
    service: &Value,
    pods: &[Value],
    nodes: &BTreeMap<String, Value>,
) -> Vec<Value> {
    let Some(selector) = selector_of(service) else {
        return Vec::new();
    };
    let name = service["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = service["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let ports = service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let members: Vec<&Value> = pods
        .iter()
        .filter(|p| p["metadata"]["namespace"].as_str() == Some(namespace))
        .filter(|p| selector.matches(p))
        .filter(|p| {
            p["status"]["podIP"]
                .as_str()
                .is_some_and(|ip| !ip.is_empty() && !ip.contains(':'))
        })
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .collect();
    // Ports of the slice: resolved from the first member (pods of one Service share their spec).
    let slice_ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let number = members
                .first()
                .and_then(|pod| target_port(p, pod))
                .or_else(|| p["port"].as_i64());
            let mut sp =
                json!({"port": number, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
            if let Some(n) = p["name"].as_str() {
                sp["name"] = json!(n);
            }
            sp
        })
        .collect();
    let mut endpoints: Vec<Value> = members
        .iter()
        .map(|pod| {
            let serving = pod_ready(pod);
            let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
            let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
            let mut ep = json!({
                "addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": serving && !terminating, "serving": serving, "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod["metadata"]["name"]},
            });
            if !node.is_empty() {
                ep["nodeName"] = json!(node);
                if let Some(zone) = nodes
                    .get(node)
                    .and_then(|n| n["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str())
                {
                    ep["zone"] = json!(zone);
                }
            }
            ep
        })
        .collect();
    endpoints.sort_by_key(|e| e["addresses"][0].as_str().unwrap_or_default().to_owned());
    let chunks: Vec<Vec<Value>> = if endpoints.is_empty() {
        vec![Vec::new()]
    } else {
        endpoints
            .chunks(MAX_ENDPOINTS_PER_SLICE)
            .map(<[Value]>::to_vec)
            .collect()
    };
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, eps)| {
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-{i}"), "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
                },
                "addressType": "IPv4",
                "ports": slice_ports,
                "endpoints": eps,
            })
        })
        .collect()
}

/// The Nodes of `store` by name (for endpoint zones).
fn nodes_by_name(store: &Store) -> BTreeMap<String, Value> {
    store
        .list("nodes", None, |_| true)
        .into_iter()
        .map(|n| {
            (
                n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                n,
            )
        })
        .collect()
}

fn is_managed(slice: &Value) -> bool {
    slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
}

/// Makes the `existing` managed slices what `desired` says: updates what differs, deletes what
/// is not desired, creates what is missing.
fn apply(store: &mut Store, existing: &[Value], mut desired: BTreeMap<(String, String), Value>) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        for k in ["resourceVersion", "uid", "creationTimestamp"] {
            if let Some(m) = v["metadata"].as_object_mut() {
                m.remove(k);
            }
        }
        v
    };
    for slice in existing {
        let (ns, n) = namespace_and_name(slice);
        match desired.remove(&(ns.clone(), n.clone())) {
            None => {
                let _ = store.delete("endpointslices", &ns, &n);
            }
            Some(want) if strip(slice) != want => {
                let _ = store.update("endpointslices", &ns, &n, want);
            }
            Some(_) => {}
        }
    }
    for ((ns, _), slice) in desired {
        let _ = store.create("endpointslices", &ns, slice);
    }
}

/// Brings every managed slice in line with the Services, Pods and Nodes of `store`: at start, on
/// a Node change, and when the controller fell behind the changes.
pub fn reconcile(store: &mut Store) {
    let services = store.list("services", None, |_| true);
    let pods = store.list("pods", None, |_| true);
    let nodes = nodes_by_name(store);
    let mut desired: BTreeMap<(String, String), Value> = BTreeMap::new();
    for svc in &services {
        for slice in desired_slices(svc, &pods, &nodes) {
            desired.insert(namespace_and_name(&slice), slice);
        }
    }
    let existing = store.list("endpointslices", None, is_managed);
    apply(store, &existing, desired);
}

/// The managed slices of Service `namespace/name`, found by the names the controller gives them
/// (`<name>-0`, `<name>-1`, …) rather than by scanning the namespace's slices. A slice of that
/// name that another controller manages, or that labels another Service, is not ours.
fn slices_of(store: &Store, namespace: &str, name: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0.. {
        let Ok(slice) = store.get("endpointslices", namespace, &format!("{name}-{i}")) else {
            break;
        };
        if is_managed(&slice)
            && slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str() == Some(name)
        {
            out.push(slice);
        }
    }
    out
}

/// Brings the slices of one Service in line (its Service gone: they go). What one Service write
/// costs: the Pods of its namespace (only when it has a selector) and its own slices, never every
/// Service or slice of the store.
pub fn reconcile_service(store: &mut Store, namespace: &str, name: &str) {
    let existing = slices_of(store, namespace, name);
    let desired: BTreeMap<(String, String), Value> = match store.get("services", namespace, name) {
        Ok(svc) if selector_of(&svc).is_some() => {
            let pods = store.list("pods", Some(namespace), |_| true);
            let nodes = nodes_by_name(store);
            desired_slices(&svc, &pods, &nodes)
                .into_iter()
                .map(|s| (namespace_and_name(&s), s))
                .collect()
        }
        _ => BTreeMap::new(),
    };
    if existing.is_empty() && desired.is_empty() {
        return;
    }
    apply(store, &existing, desired);
}

/// Brings the slices of every Service with a selector in `namespace` in line: after a Pod change
/// there (its labels may have left one selector for another).
pub fn reconcile_namespace(store: &mut Store, namespace: &str) {
    let services = store.list("services", Some(namespace), |s| selector_of(s).is_some());
    if services.is_empty() {
        return;
    }
    let pods = store.list("pods", Some(namespace), |_| true);
    let nodes = nodes_by_name(store);
    for svc in &services {
        let (ns, name) = namespace_and_name(svc);
        let existing = slices_of(store, &ns, &name);
        let desired = desired_slices(svc, &pods, &nodes)
            .into_iter()
            .map(|s| (namespace_and_name(&s), s))
            .collect();
        apply(store, &existing, desired);
    }
}

/// Runs the controller: a Service change reconciles that Service, a Pod change the Services of its
/// namespace, a Node change (zones) or falling behind everything.
pub async fn run(app: Arc<App>) {
    let mut rx = app.store.lock().expect("store lock").subscribe();
    reconcile(&mut app.store.lock().expect("store lock"));
    loop {
        match rx.recv().await {
            Ok(e) => {
                let store = &mut app.store.lock().expect("store lock");
                match e.resource.as_str() {
                    "services" => {
                        let name = e.object["metadata"]["name"].as_str().unwrap_or_default();
                        reconcile_service(store, &e.namespace, name);
                    }
                    "pods" => reconcile_namespace(store, &e.namespace),
                    "nodes" => reconcile(store),
                    _ => {}
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                reconcile(&mut app.store.lock().expect("store lock"));
            }
            Err(_) => return,
        }
    }
}

/// An object's (namespace, name), the key slices are matched by.
fn namespace_and_name(object: &Value) -> (String, String) {
    let field = |f: &str| {
        object["metadata"][f]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (field("namespace"), field("name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, node: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    fn service() -> Value {
        json!({"metadata": {"name": "web", "namespace": "ns"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}})
    }

    #[test]
    fn slices_follow_pods_readiness_termination_ports_and_zones() {
        let mut terminating = pod("c", "10.0.0.3", true, "n1");
        terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let other = json!({"metadata": {"name": "x", "namespace": "ns", "labels": {"app": "db"}}, "status": {"podIP": "10.0.0.9"}});
        let pods = vec![
            pod("a", "10.0.0.1", true, "n1"),
            pod("b", "10.0.0.2", false, "n2"),
            terminating,
            other,
        ];
        let nodes = BTreeMap::from([(
            "n1".to_owned(),
            json!({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}}),
        )]);
        let slices = desired_slices(&service(), &pods, &nodes);
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert_eq!(s["ports"][0]["port"], 8080, "named target port resolved");
        let eps = s["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 3);
        assert_eq!(
            eps[0]["conditions"],
            json!({"ready": true, "serving": true, "terminating": false})
        );
        assert_eq!(eps[0]["zone"], "z1");
        assert_eq!(
            eps[1]["conditions"],
            json!({"ready": false, "serving": false, "terminating": false})
        );
        assert_eq!(
            eps[2]["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
    }

    #[test]
    fn at_most_100_endpoints_per_slice_and_reconcile_converges() {
        let pods: Vec<Value> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 250, i % 250 + 1),
                    true,
                    "n1",
                )
            })
            .collect();
        let slices = desired_slices(&service(), &pods, &BTreeMap::new());
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[0]["endpoints"].as_array().unwrap().len(), 100);

        let mut store = Store::new(10_000);
        store
            .create("namespaces", "", json!({"metadata": {"name": "ns"}}))
            .unwrap();
        store.create("services", "ns", service()).unwrap();
        for p in pods.iter().take(3) {
            store.create("pods", "ns", p.clone()).unwrap();
        }
        reconcile(&mut store);
        let got = store.list("endpointslices", Some("ns"), |_| true);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["endpoints"].as_array().unwrap().len(), 3);
        let v = store.version();
        reconcile(&mut store);
        assert_eq!(store.version(), v, "nothing changed: no writes");
        store.delete("services", "ns", "web").unwrap();
        reconcile(&mut store);
        assert!(store
            .list("endpointslices", Some("ns"), |_| true)
            .is_empty());
    }

    /// The incremental paths agree with a full reconcile: a Service write touches its own slices
    /// only, a Pod write the Services of its namespace, and a deleted Service loses its slices.
    #[test]
    fn per_service_and_per_namespace_reconciles_match_a_full_one() {
        let mut store = Store::new(10_000);
        let other = json!({"metadata": {"name": "db", "namespace": "ns"},
               "spec": {"selector": {"app": "db"}, "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}});
        store.create("services", "ns", service()).unwrap();
        store.create("services", "ns", other).unwrap();
        store
            .create("pods", "ns", pod("a", "10.0.0.1", true, "n1"))
            .unwrap();
        reconcile_service(&mut store, "ns", "web");
        let names = |store: &Store| -> Vec<String> {
            store
                .list("endpointslices", Some("ns"), |_| true)
                .iter()
                .map(|s| s["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            names(&store),
            ["web-0"],
            "only the written Service's slices"
        );
        let db_pod = json!({"metadata": {"name": "d", "namespace": "ns", "labels": {"app": "db"}},
            "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]}});
        store.create("pods", "ns", db_pod).unwrap();
        reconcile_namespace(&mut store, "ns");
        assert_eq!(names(&store), ["db-0", "web-0"]);
        let before = store.version();
        reconcile(&mut store);
        assert_eq!(
            store.version(),
            before,
            "a full reconcile finds nothing left to do"
        );

        store.delete("services", "ns", "web").unwrap();
        reconcile_service(&mut store, "ns", "web");
        assert_eq!(names(&store), ["db-0"]);
        // A slice that merely has a matching name but is not the controller's stays.
        store
            .create(
                "endpointslices",
                "ns",
                json!({"metadata": {"name": "web-0", "labels": {"kubernetes.io/service-name": "web"}}}),
            )
            .unwrap();
        reconcile_service(&mut store, "ns", "web");
        assert_eq!(names(&store), ["db-0", "web-0"]);
    }
}
