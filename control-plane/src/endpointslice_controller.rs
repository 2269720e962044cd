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

/// Brings every managed slice in line with the Services, Pods and Nodes of `store`.
pub fn reconcile(store: &mut Store) {
    let services = store.list("services", None, |_| true);
    let pods = store.list("pods", None, |_| true);
    let nodes: BTreeMap<String, Value> = store
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
        .collect();
    let mut desired: BTreeMap<(String, String), Value> = BTreeMap::new();
    for svc in &services {
        for slice in desired_slices(svc, &pods, &nodes) {
            desired.insert(namespace_and_name(&slice), slice);
        }
    }
    let existing = store.list("endpointslices", None, |s| {
        s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
    });
    let strip = |v: &Value| {
        let mut v = v.clone();
        for k in ["resourceVersion", "uid", "creationTimestamp"] {
            if let Some(m) = v["metadata"].as_object_mut() {
                m.remove(k);
            }
        }
        v
    };
    for slice in &existing {
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

/// Runs the controller: reconciles on every change to Services, Pods or Nodes.
pub async fn run(app: Arc<App>) {
    let mut rx = app.store.lock().expect("store lock").subscribe();
    reconcile(&mut app.store.lock().expect("store lock"));
    loop {
        match rx.recv().await {
            Ok(e) if matches!(e.resource.as_str(), "services" | "pods" | "nodes") => {
                reconcile(&mut app.store.lock().expect("store lock"));
            }
            Ok(_) => {}
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
}
