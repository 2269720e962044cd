//! The REST API: discovery, and get/list/watch/create/update/patch/delete for the resources kproxy
//! and its tests use, with Kubernetes' paths, Status errors and watch semantics.

use std::collections::{BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::request_checks as check;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Store, StoreError, WatchEvent};

/// A resource the server serves.
#[derive(Clone, Copy, Debug)]
pub struct ResourceInfo {
    /// Plural name in URLs.
    pub name: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// `v1` or `group/version`.
    pub group_version: &'static str,
    /// Short names for kubectl.
    pub short_names: &'static [&'static str],
}

/// How often a watch that allows bookmarks gets one.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

/// Everything served.
pub const RESOURCES: &[ResourceInfo] = &[
    ResourceInfo {
        name: "namespaces",
        kind: "Namespace",
        namespaced: false,
        group_version: "v1",
        short_names: &["ns"],
    },
    ResourceInfo {
        name: "services",
        kind: "Service",
        namespaced: true,
        group_version: "v1",
        short_names: &["svc"],
    },
    ResourceInfo {
        name: "pods",
        kind: "Pod",
        namespaced: true,
        group_version: "v1",
        short_names: &["po"],
    },
    ResourceInfo {
        name: "nodes",
        kind: "Node",
        namespaced: false,
        group_version: "v1",
        short_names: &["no"],
    },
    ResourceInfo {
        name: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
        group_version: "discovery.k8s.io/v1",
        short_names: &[],
    },
    ResourceInfo {
        name: "servicecidrs",
        kind: "ServiceCIDR",
        namespaced: false,
        group_version: "networking.k8s.io/v1",
        short_names: &[],
    },
];

/// The API groups served besides the core one.
const GROUP_VERSIONS: &[&str] = &["discovery.k8s.io/v1", "networking.k8s.io/v1"];

/// The server's state.
#[derive(Debug)]
pub struct App {
    /// The objects.
    pub store: Mutex<Store>,
    /// Cluster IPs handed out (last octets of the service range).
    pub service_range: (Ipv4Addr, u32),
    /// The inclusive range node ports are allocated from (`--service-node-port-range`).
    pub node_port_range: (i64, i64),
}

/// The API server's default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: (i64, i64) = (30000, 32767);

impl App {
    /// A server with the `default` and `kube-system` namespaces, allocating cluster IPs from
    /// `range` (network address, size).
    pub fn new(service_range: (Ipv4Addr, u32)) -> Self {
        Self::with_store(Store::new(10_000), service_range)
    }

    /// A server over `store` (e.g. a durable one); creates `default` and `kube-system` if absent.
    pub fn with_store(mut store: Store, service_range: (Ipv4Addr, u32)) -> Self {
        for ns in ["default", "kube-system"] {
            if store.get("namespaces", "", ns).is_ok() {
                continue;
            }
            store
                .create(
                    "namespaces",
                    "",
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                )
                .expect("fresh store");
        }
        // The default ServiceCIDR a real API server creates from its service range (KEP-1880):
        // proxies drop traffic to addresses of it that no Service holds.
        if store.get("servicecidrs", "", "kubernetes").is_err() {
            let (net, size) = service_range;
            let prefix = 32 - size.max(1).next_power_of_two().trailing_zeros();
            store
                .create(
                    "servicecidrs",
                    "",
                    json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                           "metadata": {"name": "kubernetes"},
                           "spec": {"cidrs": [format!("{net}/{prefix}")]}}),
                )
                .expect("fresh store");
        }
        Self {
            store: Mutex::new(store),
            service_range,
            node_port_range: DEFAULT_NODE_PORT_RANGE,
        }
    }

    /// The same server allocating and validating node ports in `range` (inclusive).
    pub fn with_node_port_range(mut self, range: (i64, i64)) -> Self {
        self.node_port_range = range;
        self
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn invalid(kind: &str, name: &str, causes: &[crate::validate::Cause]) -> Response {
    let summary: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{kind} \"{name}\" is invalid: {}", summary.join(", ")),
        "reason": "Invalid", "code": 422,
        "details": {"name": name, "kind": kind.to_lowercase(), "causes": causes.iter().map(|c| c.to_json()).collect::<Vec<_>>()},
    });
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Fields of `sent` that the typed model drops: unknown to the API (for `fieldValidation=Strict`).
fn unknown_fields(info: &ResourceInfo, sent: &Value) -> Vec<String> {
    fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Option<Value> {
        serde_json::to_value(serde_json::from_value::<T>(v.clone()).ok()?).ok()
    }
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let typed = match info.kind {
        "Service" => roundtrip::<Service>(sent),
        "Pod" => roundtrip::<Pod>(sent),
        "Node" => roundtrip::<Node>(sent),
        "Namespace" => roundtrip::<Namespace>(sent),
        "EndpointSlice" => roundtrip::<EndpointSlice>(sent),
        _ => None,
    };
    let Some(typed) = typed else {
        return Vec::new();
    };
    fn walk(path: &str, sent: &Value, kept: &Value, out: &mut Vec<String>) {
        match (sent, kept) {
            (Value::Object(s), Value::Object(k)) => {
                for (key, v) in s {
                    let p = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    match k.get(key) {
                        Some(kv) => walk(&p, v, kv, out),
                        None if !v.is_null() => out.push(p),
                        None => {}
                    }
                }
            }
            (Value::Array(s), Value::Array(k)) => {
                for (i, (sv, kv)) in s.iter().zip(k).enumerate() {
                    walk(&format!("{path}[{i}]"), sv, kv, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", sent, &typed, &mut out);
    out
}

fn store_error(e: StoreError) -> Response {
    let (code, reason) = match &e {
        StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
        StoreError::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
        StoreError::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
        StoreError::Gone { .. } => (StatusCode::GONE, "Expired"),
        StoreError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    };
    status(code, reason, e.to_string())
}

fn ok(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

fn discovery(path: &str) -> Option<Value> {
    let resources = |gv: &str| -> Value {
        let list: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.group_version == gv)
            .flat_map(|r| {
                let main = json!({
                    "name": r.name, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                    "kind": r.kind, "shortNames": r.short_names,
                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                });
                let status = json!({"name": format!("{}/status", r.name), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]});
                if r.name == "endpointslices" { vec![main] } else { vec![main, status] }
            })
            .collect();
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
    };
    Some(match path {
        "/api" => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
        }
        "/apis" => {
            let groups: Vec<Value> = GROUP_VERSIONS
                .iter()
                .map(|gv| {
                    let group = gv.split_once('/').map_or(*gv, |(g, _)| g);
                    json!({
                        "name": group,
                        "versions": [{"groupVersion": gv, "version": "v1"}],
                        "preferredVersion": {"groupVersion": gv, "version": "v1"},
                    })
                })
                .collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        "/api/v1" => resources("v1"),
        p if p
            .strip_prefix("/apis/")
            .is_some_and(|gv| GROUP_VERSIONS.contains(&gv)) =>
        {
            resources(&p["/apis/".len()..])
        }
        "/openapi/v2" => {
            // A minimal schema: one permissive definition per kind, enough for kubectl's client-side
            // validation and apply to find the types.
            let mut definitions = serde_json::Map::new();
            for r in RESOURCES {
                let (group, version) = r
                    .group_version
                    .split_once('/')
                    .unwrap_or(("", r.group_version));
                let package = if group.is_empty() {
                    "core".to_owned()
                } else {
                    group.split('.').next().unwrap_or(group).to_owned()
                };
                definitions.insert(
                    format!("io.k8s.api.{package}.{version}.{}", r.kind),
                    json!({"type": "object", "x-kubernetes-group-version-kind": [{"group": group, "kind": r.kind, "version": version}]}),
                );
            }
            json!({"swagger": "2.0", "info": {"title": "kproxy-control-plane", "version": "v1.32.0"}, "paths": {}, "definitions": definitions})
        }
        "/openapi/v3" => {
            let mut paths = serde_json::Map::new();
            paths.insert(
                "api/v1".into(),
                json!({"serverRelativeURL": "/openapi/v3/api/v1?hash=1"}),
            );
            for gv in GROUP_VERSIONS {
                paths.insert(
                    format!("apis/{gv}"),
                    json!({"serverRelativeURL": format!("/openapi/v3/apis/{gv}?hash=1")}),
                );
            }
            json!({ "paths": paths })
        }
        p if p == "/openapi/v3/api/v1"
            || p.strip_prefix("/openapi/v3/apis/")
                .is_some_and(|gv| GROUP_VERSIONS.contains(&gv)) =>
        {
            let gv = if path.ends_with("api/v1") {
                "v1"
            } else {
                &path["/openapi/v3/apis/".len()..]
            };
            let prefix = if gv == "v1" {
                "/api/v1".to_owned()
            } else {
                format!("/apis/{gv}")
            };
            let mut schemas = serde_json::Map::new();
            let mut paths = serde_json::Map::new();
            for r in RESOURCES.iter().filter(|r| r.group_version == gv) {
                let (group, version) = gv.split_once('/').unwrap_or(("", gv));
                let package = if group.is_empty() {
                    "core".to_owned()
                } else {
                    group.split('.').next().unwrap_or(group).to_owned()
                };
                let gvk = json!({"group": group, "kind": r.kind, "version": version});
                schemas.insert(
                    format!("io.k8s.api.{package}.{version}.{}", r.kind),
                    json!({"type": "object", "x-kubernetes-group-version-kind": [gvk.clone()]}),
                );
                // kubectl checks that create and patch accept `fieldValidation` before it relies on
                // server-side validation instead of downloading a full schema.
                let op = json!({
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                    "x-kubernetes-group-version-kind": gvk,
                });
                let collection = if r.namespaced {
                    format!("{prefix}/namespaces/{{namespace}}/{}", r.name)
                } else {
                    format!("{prefix}/{}", r.name)
                };
                paths.insert(collection.clone(), json!({"post": op.clone()}));
                paths.insert(
                    format!("{collection}/{{name}}"),
                    json!({"patch": op.clone(), "put": op}),
                );
            }
            json!({"openapi": "3.0.0", "info": {"title": "kproxy-control-plane", "version": "v1.32.0"}, "paths": paths, "components": {"schemas": schemas}})
        }
        "/version" => {
            json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-kproxy", "platform": "linux/amd64"})
        }
        _ => return None,
    })
}

/// What a resource path names.
struct Target {
    info: ResourceInfo,
    namespace: String,
    name: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let (gv, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("v1", r)
    } else {
        let apis = path.strip_prefix("/apis/")?;
        GROUP_VERSIONS.iter().find_map(|gv| {
            apis.strip_prefix(gv)
                .and_then(|r| r.strip_prefix('/'))
                .map(|r| (*gv, r))
        })?
    };
    let decoded: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode_path)
        .collect();
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let find = |name: &str| {
        RESOURCES
            .iter()
            .find(|r| r.name == name && r.group_version == gv)
            .copied()
    };
    let (info, namespace, name) = match segs.as_slice() {
        ["namespaces", ns, res, rest @ ..] if find(res).is_some_and(|r| r.namespaced) => (
            find(res)?,
            ns.to_string(),
            rest.first().map(|s| s.to_string()),
        ),
        [res, rest @ ..] => (
            find(res)?,
            String::new(),
            rest.first().map(|s| s.to_string()),
        ),
        _ => return None,
    };
    Some(Target {
        info,
        namespace,
        name,
    })
}

fn query_param(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// A path segment percent-decoded (`+` stays a plus in paths).
fn percent_decode_path(s: &str) -> String {
    percent_decode(&s.replace('+', "%2B"))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Stores the new state of an object (PUT, or PATCH after the patch is applied) and answers with
/// it. A Service is first checked like a create: validated, its cluster IP immutable, node ports
/// kept or allocated.
fn write_update(
    app: &App,
    store: &mut Store,
    info: &ResourceInfo,
    ns: &str,
    name: &str,
    mut object: Value,
) -> Response {
    if info.name == "services" {
        let existing = match store.get("services", ns, name) {
            Ok(e) => e,
            Err(e) => return store_error(e),
        };
        if let Err(r) = allocate_service(app, store, &mut object, Some(&existing)) {
            return *r;
        }
        let causes = crate::validate::service(&object, app.service_range, app.node_port_range);
        if !causes.is_empty() {
            return invalid("Service", name, &causes);
        }
    }
    store
        .update(info.name, ns, name, object)
        .map(ok)
        .unwrap_or_else(store_error)
}

/// Fills in what the API server allocates for a Service: the cluster IP and node ports.
///
/// On an update (`existing` is the stored Service) the cluster IP is immutable and kept when the
/// new object leaves it out; node ports and the health-check port the update leaves out are kept
/// (matched by port and protocol), and new ones are allocated, e.g. when the type becomes NodePort.
fn allocate_service(
    app: &App,
    store: &mut Store,
    svc: &mut Value,
    existing: Option<&Value>,
) -> Result<(), Box<Response>> {
    let spec = &mut svc["spec"];
    if spec["type"].is_null() {
        spec["type"] = json!("ClusterIP");
    }
    let kind = spec["type"].as_str().unwrap_or_default().to_owned();
    if let Some(old) = existing.map(|e| &e["spec"]) {
        let old_ip = old["clusterIP"].as_str().unwrap_or_default();
        let new_ip = spec["clusterIP"].as_str().unwrap_or_default();
        if new_ip.is_empty() && !old_ip.is_empty() {
            spec["clusterIP"] = old["clusterIP"].clone();
            spec["clusterIPs"] = old["clusterIPs"].clone();
        } else if new_ip != old_ip && !old_ip.is_empty() && kind != "ExternalName" {
            return Err(Box::new(status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("Service is invalid: spec.clusterIP: Invalid value: \"{new_ip}\": field is immutable"),
            )));
        }
        let same_port = |p: &Value, q: &Value| {
            p["port"] == q["port"]
                && p["protocol"].as_str().unwrap_or("TCP")
                    == q["protocol"].as_str().unwrap_or("TCP")
        };
        let old_ports = old["ports"].as_array().cloned().unwrap_or_default();
        if kind == "NodePort" || kind == "LoadBalancer" {
            for p in spec["ports"].as_array_mut().into_iter().flatten() {
                if p["nodePort"].as_i64().unwrap_or(0) == 0 {
                    if let Some(q) = old_ports.iter().find(|q| same_port(p, q)) {
                        if q["nodePort"].as_i64().unwrap_or(0) != 0 {
                            p["nodePort"] = q["nodePort"].clone();
                        }
                    }
                }
            }
        }
        if spec["healthCheckNodePort"].as_i64().unwrap_or(0) == 0
            && old["healthCheckNodePort"].as_i64().unwrap_or(0) != 0
            && kind == "LoadBalancer"
            && spec["externalTrafficPolicy"] == json!("Local")
        {
            spec["healthCheckNodePort"] = old["healthCheckNodePort"].clone();
        }
    }
    if kind == "ExternalName" || spec["clusterIP"] == json!("None") {
        return Ok(());
    }
    // On an update the cluster IP was kept or checked immutable above.
    if existing.is_none() {
        if spec["clusterIP"].as_str().unwrap_or_default().is_empty() {
            let (net, size) = app.service_range;
            let free = store
                .allocations_mut()
                .next_free_cluster_ip(net, size)
                .ok_or_else(|| {
                    status(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        "no free cluster IPs".into(),
                    )
                })?;
            spec["clusterIP"] = json!(free.to_string());
        } else if store
            .allocations()
            .cluster_ip_in_use(spec["clusterIP"].as_str().unwrap_or_default())
        {
            return Err(Box::new(status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("Service is invalid: spec.clusterIP: Invalid value: {}: provided IP is already allocated", spec["clusterIP"]),
            )));
        }
    }
    if spec["clusterIPs"].is_null() || existing.is_none() {
        spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
    }
    let needs_node_ports = kind == "NodePort" || kind == "LoadBalancer";
    let needs_health_check = kind == "LoadBalancer"
        && spec["externalTrafficPolicy"] == json!("Local")
        && spec["healthCheckNodePort"].as_i64().unwrap_or(0) == 0;
    if needs_node_ports || needs_health_check {
        // Ports held by other Services: the index's holders, minus the one this Service (on an
        // update) holds itself. `chosen`: ports this request has claimed so far.
        let own: BTreeSet<i64> = existing
            .map(|e| crate::allocations::node_ports_of(e).collect())
            .unwrap_or_default();
        let mut chosen: BTreeSet<i64> = BTreeSet::new();
        let (low, high) = app.node_port_range;
        let range_full = || {
            Box::new(status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("failed to allocate a nodePort: range {low}-{high} is full"),
            ))
        };
        if needs_node_ports {
            // Requested ports first, so a later allocation cannot take one of them.
            let ports = spec["ports"]
                .as_array_mut()
                .map(Vec::as_mut_slice)
                .unwrap_or_default();
            for (i, p) in ports.iter().enumerate() {
                let requested = p["nodePort"].as_i64().unwrap_or(0);
                if requested == 0 {
                    continue;
                }
                let held_by_others = store.allocations().node_port_holders(requested)
                    > u32::from(own.contains(&requested));
                if held_by_others || !chosen.insert(requested) {
                    return Err(Box::new(status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        format!("Service is invalid: spec.ports[{i}].nodePort: Invalid value: {requested}: provided port is already allocated"),
                    )));
                }
            }
            for p in ports.iter_mut() {
                if p["nodePort"].as_i64().unwrap_or(0) == 0 {
                    let free = store
                        .allocations_mut()
                        .next_free_node_port(low, high, |n| chosen.contains(&n))
                        .ok_or_else(range_full)?;
                    chosen.insert(free);
                    p["nodePort"] = json!(free);
                }
            }
        }
        // A Local LoadBalancer gets a health-check node port for the load balancer to probe.
        if needs_health_check {
            let free = store
                .allocations_mut()
                .next_free_node_port(low, high, |n| chosen.contains(&n))
                .ok_or_else(range_full)?;
            spec["healthCheckNodePort"] = json!(free);
        }
    }
    if let Some(ports) = spec["ports"].as_array_mut() {
        for p in ports {
            if p["protocol"].is_null() {
                p["protocol"] = json!("TCP");
            }
            if p["targetPort"].is_null() {
                p["targetPort"] = p["port"].clone();
            }
        }
    }
    Ok(())
}

fn list_kind(info: &ResourceInfo) -> String {
    format!("{}List", info.kind)
}

/// The one handler: discovery, health, and resources.
pub async fn handle(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if matches!(path, "/healthz" | "/readyz" | "/livez") {
        return "ok".into_response();
    }
    if method == Method::GET {
        let accept = headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if path.starts_with("/openapi/v2")
            && accept.contains("protobuf")
            && !accept.contains("json")
        {
            return status(
                StatusCode::NOT_ACCEPTABLE,
                "NotAcceptable",
                "only JSON is served".into(),
            );
        }
        if let Some(v) = discovery(path) {
            return ok(v);
        }
    }
    let Some(target) = parse_target(path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let info = target.info;
    let ns = target.namespace.clone();
    let labels = match LabelSelector::parse(&query_param(&uri, "labelSelector").unwrap_or_default())
    {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
    };
    let fields = match FieldSelector::parse(&query_param(&uri, "fieldSelector").unwrap_or_default())
    {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
    };
    // Objects and merge patches are JSON objects; a JSON patch is an array of operations.
    let json_patch = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json-patch+json"));
    let parse_body = || -> Result<Value, Box<Response>> {
        let bad = |m: String| Box::new(status(StatusCode::BAD_REQUEST, "BadRequest", m));
        let v = serde_json::from_slice::<Value>(&body)
            .map_err(|e| bad(format!("invalid JSON body: {e}")))?;
        match (&v, json_patch) {
            (Value::Object(_), false) | (Value::Array(_), true) => Ok(v),
            (_, false) => Err(bad(format!("the body must be a JSON object, not {v}"))),
            (_, true) => Err(bad(format!(
                "a JSON patch must be an array of operations, not {v}"
            ))),
        }
    };
    let bad_request = |m: String| status(StatusCode::BAD_REQUEST, "BadRequest", m);
    let watch = match check::bool_param("watch", query_param(&uri, "watch")) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let (limit, start) = match (
        check::number_param("limit", query_param(&uri, "limit")),
        check::number_param("continue", query_param(&uri, "continue")),
    ) {
        (Ok(l), Ok(c)) => (l, c),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    if let Some(name) = &target.name {
        if method != Method::GET && method != Method::DELETE {
            if let Some(reason) = check::check_name(name, check::NameRule::for_resource(info.name))
            {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("{} {name:?} is invalid: metadata.name: {reason}", info.kind),
                );
            }
        }
    }
    match (method, target.name) {
        (Method::GET, None) => {
            if watch {
                if let Some(rv) = query_param(&uri, "resourceVersion").filter(|v| !v.is_empty()) {
                    if rv.parse::<u64>().is_err() {
                        return bad_request(format!(
                            "resourceVersion: {rv:?} is not a valid resource version"
                        ));
                    }
                }
                return watch_response(&app, &uri, info, ns, labels, fields);
            }
            // The items are shared, not copied, and each is encoded once per version: the lock is
            // held while they are gathered, the body is assembled from their bytes after.
            let (items, version) = {
                let store = app.store.lock().expect("store lock");
                let namespace = (!ns.is_empty()).then_some(ns.as_str());
                let items: Vec<crate::store::Stored> = store
                    .list_shared(info.name, namespace)
                    .into_iter()
                    .filter(|s| labels.matches(&s.object) && fields.matches(&s.object))
                    .collect();
                (items, store.version())
            };
            // Pagination: `continue` is the position after the last item returned (items come in
            // a stable order), `limit` the page size.
            let start = start.unwrap_or(0) as usize;
            let limit = limit.filter(|l| *l > 0).map_or(usize::MAX, |l| l as usize);
            let total = items.len();
            let mut metadata = json!({"resourceVersion": version.to_string()});
            if start.saturating_add(limit) < total {
                metadata["continue"] = json!((start + limit).to_string());
                metadata["remainingItemCount"] = json!(total - start - limit);
            }
            let page: Vec<bytes::Bytes> = items
                .iter()
                .skip(start)
                .take(limit)
                .map(|s| s.json())
                .collect();
            let head = json!({
                "apiVersion": info.group_version,
                "kind": list_kind(&info),
                "metadata": metadata,
            })
            .to_string();
            let mut body = Vec::with_capacity(
                head.len() + 12 + page.iter().map(|b| b.len() + 1).sum::<usize>(),
            );
            // `{...head...,"items":[a,b,c]}`: the head's closing brace makes way for the items.
            body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
            body.extend_from_slice(b",\"items\":[");
            for (i, item) in page.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(item);
            }
            body.extend_from_slice(b"]}");
            ([("content-type", "application/json")], body).into_response()
        }
        (Method::DELETE, None) => {
            // deletecollection
            let mut store = app.store.lock().expect("store lock");
            let namespace = (!ns.is_empty()).then_some(ns.as_str());
            let items = store.list(info.name, namespace, |o| {
                labels.matches(o) && fields.matches(o)
            });
            let mut deleted = Vec::new();
            for o in items {
                let n = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let onns = o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if let Ok(d) = store.delete(info.name, &onns, &n) {
                    deleted.push(d);
                }
            }
            ok(json!({
                "apiVersion": info.group_version,
                "kind": list_kind(&info),
                "metadata": {"resourceVersion": store.version().to_string()},
                "items": deleted,
            }))
        }
        (Method::GET, Some(name)) => {
            let store = app.store.lock().expect("store lock");
            store
                .get(info.name, &ns, &name)
                .map(ok)
                .unwrap_or_else(store_error)
        }
        (Method::POST, None) => {
            let mut object = match parse_body() {
                Ok(o) => o,
                Err(r) => return *r,
            };
            if object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
            {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("{} is invalid: metadata.name: Required value", info.kind),
                );
            }
            if let Some(r) = object_checks(&info, &ns, None, &object) {
                return r;
            }
            if query_param(&uri, "fieldValidation").as_deref() == Some("Strict") {
                let unknown = unknown_fields(&info, &object);
                if !unknown.is_empty() {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!(
                            "strict decoding error: unknown field \"{}\"",
                            unknown.join("\", unknown field \"")
                        ),
                    );
                }
            }
            if info.name == "services" {
                let causes =
                    crate::validate::service(&object, app.service_range, app.node_port_range);
                if !causes.is_empty() {
                    let name = object["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    return invalid("Service", &name, &causes);
                }
            }
            let mut store = app.store.lock().expect("store lock");
            if info.namespaced {
                match store.get("namespaces", "", &ns) {
                    Err(_) => {
                        return status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            format!("namespaces \"{ns}\" not found"),
                        )
                    }
                    Ok(n) if n["status"]["phase"] == "Terminating" => {
                        return status(
                            StatusCode::FORBIDDEN,
                            "Forbidden",
                            format!(
                                "unable to create new content in namespace {ns} because it is being terminated"
                            ),
                        )
                    }
                    Ok(_) => {}
                }
            }
            if info.name == "services" {
                if let Err(r) = allocate_service(&app, &mut store, &mut object, None) {
                    return *r;
                }
            }
            object["apiVersion"] = json!(info.group_version);
            object["kind"] = json!(info.kind);
            object["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            match store.create(info.name, &ns, object) {
                Ok(o) => (
                    StatusCode::CREATED,
                    [("content-type", "application/json")],
                    o.to_string(),
                )
                    .into_response(),
                Err(e) => store_error(e),
            }
        }
        (Method::PUT, Some(name)) => {
            let mut object = match parse_body() {
                Ok(o) => o,
                Err(r) => return *r,
            };
            if let Some(r) = object_checks(&info, &ns, Some(&name), &object) {
                return r;
            }
            object["apiVersion"] = json!(info.group_version);
            object["kind"] = json!(info.kind);
            let mut store = app.store.lock().expect("store lock");
            write_update(&app, &mut store, &info, &ns, &name, object)
        }
        (Method::PATCH, Some(name)) => {
            let patch = match parse_body() {
                Ok(o) => o,
                Err(r) => return *r,
            };
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();

            let known = [
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ];
            if !known.iter().any(|k| content_type.starts_with(k)) {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: {}",
                        known.join(", ")
                    ),
                );
            }
            let mut store = app.store.lock().expect("store lock");
            let mut object = match store.get(info.name, &ns, &name) {
                Ok(o) => o,
                Err(e) => return store_error(e),
            };
            if content_type.starts_with("application/json-patch+json") {
                if let Err(e) = crate::patch::json_patch(&mut object, &patch) {
                    return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e);
                }
            } else if content_type.starts_with("application/strategic-merge-patch+json") {
                crate::patch::strategic(&mut object, &patch);
            } else {
                crate::patch::merge(&mut object, &patch);
            }
            if let Some(r) = object_checks(&info, &ns, Some(&name), &object) {
                return r;
            }
            // A patch applies to whatever is stored: no optimistic-concurrency check.
            object["metadata"]["resourceVersion"] = Value::Null;
            write_update(&app, &mut store, &info, &ns, &name, object)
        }
        (Method::DELETE, Some(name)) => {
            // Pods with a grace period become terminating first, and go when it has passed.
            let grace = if info.name == "pods" {
                let from_body = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|b| b["gracePeriodSeconds"].as_u64());
                let from_query =
                    query_param(&uri, "gracePeriodSeconds").and_then(|g| g.parse().ok());
                let store = app.store.lock().expect("store lock");
                let from_spec = store
                    .get("pods", &ns, &name)
                    .ok()
                    .and_then(|p| p["spec"]["terminationGracePeriodSeconds"].as_u64());
                from_query.or(from_body).or(from_spec).unwrap_or(30)
            } else {
                0
            };
            let mut store = app.store.lock().expect("store lock");
            if info.name == "namespaces" {
                return delete_namespace(&mut store, &name);
            }
            if grace == 0 {
                return store
                    .delete(info.name, &ns, &name)
                    .map(ok)
                    .unwrap_or_else(store_error);
            }
            let mut pod = match store.get("pods", &ns, &name) {
                Ok(p) => p,
                Err(e) => return store_error(e),
            };
            if pod["metadata"]["deletionTimestamp"].is_null() {
                pod["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                pod["metadata"]["resourceVersion"] = Value::Null;
                pod = match store.update("pods", &ns, &name, pod) {
                    Ok(p) => p,
                    Err(e) => return store_error(e),
                };
                let app = Arc::clone(&app);
                let (ns, name) = (ns.clone(), name.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(grace)).await;
                    let _ = app
                        .store
                        .lock()
                        .expect("store lock")
                        .delete("pods", &ns, &name);
                });
            }
            ok(pod)
        }
        (m, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{m} is not supported here"),
        ),
    }
}

/// The largest request body (kube-apiserver's limit is 3 MiB); a larger one is a 413 `Status`.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Refuses a request whose declared length is over [`MAX_BODY_BYTES`] before reading its body:
/// the client learns at once, and the server reads nothing it would throw away.
pub async fn refuse_large_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared.filter(|len| *len > MAX_BODY_BYTES) {
        return status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body is {len} bytes; the limit is {MAX_BODY_BYTES}"),
        );
    }
    next.run(request).await
}

/// Turns an error answer that is not JSON (the framework's own: 413 for a body over the limit, a
/// rejected request) into a `Status` object, so every error a client sees is one.
pub async fn errors_as_status(response: Response) -> Response {
    let is_json = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let code = response.status();
    if code.as_u16() < 400 || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let reason = match code.as_u16() {
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        400 => "BadRequest",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        _ => "InternalError",
    };
    let message = if text.is_empty() {
        code.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    status(code, reason, message)
}

/// The namespaces that may not be deleted, as kube-apiserver protects them.
const PROTECTED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Deletes a namespace the way the API server's namespace lifecycle does: the namespace turns
/// Terminating (watchers see it), everything in it is deleted (watchers see each deletion), then
/// the namespace goes. The system namespaces are refused.
fn delete_namespace(store: &mut Store, name: &str) -> Response {
    if PROTECTED_NAMESPACES.contains(&name) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        );
    }
    let mut namespace = match store.get("namespaces", "", name) {
        Ok(n) => n,
        Err(e) => return store_error(e),
    };
    if namespace["status"]["phase"] != "Terminating" {
        namespace["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        namespace["status"]["phase"] = json!("Terminating");
        namespace["metadata"]["resourceVersion"] = Value::Null;
        namespace = match store.update("namespaces", "", name, namespace) {
            Ok(n) => n,
            Err(e) => return store_error(e),
        };
    }
    for resource in RESOURCES.iter().filter(|r| r.namespaced) {
        for object in store.list(resource.name, Some(name), |_| true) {
            let object_name = object["metadata"]["name"].as_str().unwrap_or_default();
            let _ = store.delete(resource.name, name, object_name);
        }
    }
    let _ = store.delete("namespaces", "", name);
    ok(namespace)
}

/// The checks of a body against its URL and the API server's limits: the name's format, the name
/// and namespace matching the URL's, the annotations' size.
fn object_checks(
    info: &ResourceInfo,
    url_namespace: &str,
    url_name: Option<&str>,
    object: &Value,
) -> Option<Response> {
    let body_name = object["metadata"]["name"].as_str();
    if let (Some(url), Some(body)) = (url_name, body_name) {
        if url != body {
            return Some(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "the name of the object ({body}) does not match the name on the URL ({url})"
                ),
            ));
        }
    }
    if let Some(body_ns) = object["metadata"]["namespace"].as_str() {
        if info.namespaced && !body_ns.is_empty() && body_ns != url_namespace {
            return Some(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({url_namespace})"
                ),
            ));
        }
    }
    if let Some(name) = body_name {
        if let Some(reason) = check::check_name(name, check::NameRule::for_resource(info.name)) {
            return Some(status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("{} {name:?} is invalid: metadata.name: {reason}", info.kind),
            ));
        }
    }
    let size = check::annotation_bytes(object);
    if size > check::MAX_ANNOTATION_BYTES {
        return Some(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "{} is invalid: metadata.annotations: Too long: must have at most {} bytes (has {size})",
                info.kind,
                check::MAX_ANNOTATION_BYTES
            ),
        ));
    }
    None
}

/// An event's watch line: encoded once by the store, shared by every watcher.
fn event_line(e: &WatchEvent) -> Bytes {
    e.line.clone()
}

fn watch_response(
    app: &Arc<App>,
    uri: &Uri,
    info: ResourceInfo,
    ns: String,
    labels: LabelSelector,
    fields: FieldSelector,
) -> Response {
    let timeout = query_param(uri, "timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800u64);
    let since = query_param(uri, "resourceVersion").unwrap_or_default();
    let (replay_labels, replay_fields) = (labels.clone(), fields.clone());
    let matches = {
        let ns = ns.clone();
        move |e: &WatchEvent| {
            e.resource == info.name
                && (ns.is_empty() || e.namespace == ns)
                && labels.matches(&e.object)
                && fields.matches(&e.object)
        }
    };
    let store = app.store.lock().expect("store lock");
    let rx = store.subscribe();
    // The replay holds the stored objects themselves (shared), and their ADDED lines are
    // encoded once for every watcher: an abandoned watch costs pointers, not a copy of the data.
    let (replay, from): (Vec<Bytes>, u64) = if since.is_empty() || since == "0" {
        let namespace = (!ns.is_empty()).then_some(ns.as_str());
        let lines = store
            .list_shared(info.name, namespace)
            .into_iter()
            .filter(|s| replay_labels.matches(&s.object) && replay_fields.matches(&s.object))
            .map(|s| s.added_line())
            .collect();
        (lines, store.version())
    } else {
        let rv: u64 = since.parse().unwrap_or(0);
        match store.events_since(rv) {
            Ok(events) => (
                events
                    .iter()
                    .filter(|e| matches(e))
                    .map(event_line)
                    .collect(),
                store.version(),
            ),
            Err(e) => {
                return (
                    [("content-type", "application/json")],
                    gone_line(&e.to_string()),
                )
                    .into_response();
            }
        }
    };
    drop(store);
    let live = futures::stream::unfold(
        LiveWatch {
            rx,
            last: from,
            backlog: VecDeque::new(),
            app: Arc::clone(app),
            done: false,
        },
        move |mut watch| {
            let matches = matches.clone();
            async move {
                let line = watch.next_line(&matches).await?;
                Some((line, watch))
            }
        },
    );
    // With allowWatchBookmarks, a BOOKMARK carrying the current resourceVersion every few seconds,
    // so a client that reconnects resumes from a recent version instead of re-listing.
    let bookmarks = query_param(uri, "allowWatchBookmarks").is_some_and(|b| b == "true");
    let bookmark_app = Arc::clone(app);
    let kind = info.kind;
    let api_version = info.group_version;
    let ticks = futures::stream::unfold((), move |()| {
        let app = Arc::clone(&bookmark_app);
        async move {
            tokio::time::sleep(BOOKMARK_INTERVAL).await;
            let version = app.store.lock().expect("store lock").version();
            let line = json!({"type": "BOOKMARK", "object": {
                "kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": version.to_string()},
            }});
            Some((Bytes::from(format!("{line}\n")), ()))
        }
    })
    .filter(move |_| futures::future::ready(bookmarks));
    let stream = futures::stream::iter(replay)
        .chain(futures::stream::select(live, ticks))
        .map(Ok::<_, std::io::Error>)
        .take_until(tokio::time::sleep(Duration::from_secs(timeout)));
    (
        [("content-type", "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// One watch's live phase: events from the store's fan-out channel, in resourceVersion order.
///
/// A watcher that falls behind the channel (`Lagged`) is not allowed to lose events: it catches up
/// from the store's history after the last version it sent, then skips channel events it has
/// already sent. Only when that history is gone too does it get the in-stream 410 that makes a
/// client re-list, as the real API server does.
struct LiveWatch {
    rx: tokio::sync::broadcast::Receiver<WatchEvent>,
    /// The resourceVersion of the last event considered (sent or filtered out).
    last: u64,
    /// Events recovered from the history after a lag, not yet considered.
    backlog: VecDeque<WatchEvent>,
    app: Arc<App>,
    /// Set after the 410: the stream then ends.
    done: bool,
}

impl LiveWatch {
    /// The next line to send, or `None` when the watch ends.
    async fn next_line(&mut self, matches: &impl Fn(&WatchEvent) -> bool) -> Option<Bytes> {
        use tokio::sync::broadcast::error::RecvError;
        if self.done {
            return None;
        }
        loop {
            let event = match self.backlog.pop_front() {
                Some(e) => e,
                None => match self.rx.recv().await {
                    Ok(e) if e.resource_version <= self.last => continue,
                    Ok(e) => e,
                    Err(RecvError::Lagged(_)) => {
                        let store = self.app.store.lock().expect("store lock");
                        match store.events_since(self.last) {
                            Ok(events) => {
                                self.backlog.extend(events);
                                continue;
                            }
                            Err(e) => {
                                self.done = true;
                                return Some(Bytes::from(gone_line(&e.to_string())));
                            }
                        }
                    }
                    Err(RecvError::Closed) => return None,
                },
            };
            self.last = event.resource_version;
            if matches(&event) {
                return Some(event_line(&event));
            }
        }
    }
}

/// The in-stream ERROR event (410 Expired) that tells a client its version is too old.
fn gone_line(message: &str) -> String {
    let gone = json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": "Expired", "code": 410,
    }});
    format!("{gone}\n")
}

/// Now as RFC 3339 (UTC, seconds), for timestamps the server sets.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_with(history: usize, fanout: usize) -> Arc<App> {
        Arc::new(App::with_store(
            Store::with_fanout_capacity(history, fanout),
            (Ipv4Addr::new(10, 96, 0, 0), 1 << 16),
        ))
    }

    fn create_pods(app: &App, n: usize) {
        let mut store = app.store.lock().unwrap();
        for i in 0..n {
            store
                .create(
                    "pods",
                    "default",
                    json!({"metadata": {"name": format!("p{i}")}}),
                )
                .unwrap();
        }
    }

    fn live(app: &Arc<App>) -> LiveWatch {
        let store = app.store.lock().unwrap();
        LiveWatch {
            rx: store.subscribe(),
            last: store.version(),
            backlog: VecDeque::new(),
            app: Arc::clone(app),
            done: false,
        }
    }

    #[tokio::test]
    async fn a_lagging_watcher_catches_up_from_history_in_order() {
        let app = app_with(1000, 2);
        let mut watch = live(&app);
        create_pods(&app, 50);
        let mut names = Vec::new();
        for _ in 0..50 {
            let line = watch.next_line(&|e| e.resource == "pods").await.unwrap();
            let v: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(v["type"], "ADDED");
            names.push(v["object"]["metadata"]["name"].as_str().unwrap().to_owned());
        }
        let expected: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
        assert_eq!(names, expected);
        // Nothing is sent twice: the channel's retained copies are skipped.
        let next = tokio::time::timeout(Duration::from_millis(50), watch.next_line(&|_| true));
        assert!(next.await.is_err(), "no further events");
    }

    #[tokio::test]
    async fn a_watcher_lagging_past_the_history_gets_410_then_ends() {
        let app = app_with(5, 2);
        let mut watch = live(&app);
        create_pods(&app, 20);
        let line = watch.next_line(&|_| true).await.unwrap();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["object"]["code"].as_i64()),
            (Some("ERROR"), Some(410))
        );
        assert!(watch.next_line(&|_| true).await.is_none());
    }
}
