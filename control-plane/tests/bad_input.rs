//! Bad input gets a `Status` with a clear message, and the server keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;

async fn start() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(control_plane::serve(
        listener,
        ("10.96.0.0".parse().unwrap(), 1 << 16),
    ));
    addr
}

/// One HTTP/1.1 request with a JSON body; returns (status, JSON body).
fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    request_as(addr, method, path, "application/json", body)
}

/// One HTTP/1.1 request with the given content type; returns (status, JSON body).
fn request_as(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (
        code,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_invalid_input_get_status_errors() {
    let addr = start().await;
    tokio::task::spawn_blocking(move || {
        let svcs = "/api/v1/namespaces/default/services";
        let (code, body) = request(addr, "POST", svcs, "{not json");
        assert_eq!(code, 400);
        assert_eq!(body["kind"], "Status");
        assert!(body["message"].as_str().unwrap().contains("invalid JSON"), "{body}");

        let unknown = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80}],"clusterIPz":"x"}}"#;
        let (code, body) = request(addr, "POST", &format!("{svcs}?fieldValidation=Strict"), unknown);
        assert_eq!(code, 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains("unknown field \"spec.clusterIPz\""), "{body}");

        let invalid = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"b"},"spec":{"ports":[{"port":0},{"port":70000,"protocol":"ICMP"}]}}"#;
        let (code, body) = request(addr, "POST", svcs, invalid);
        assert_eq!(code, 422);
        assert_eq!(body["reason"], "Invalid");
        let fields: Vec<&str> = body["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&"spec.ports[0].port") && fields.contains(&"spec.ports[1].protocol"), "{body}");

        let (code, body) = request(addr, "POST", "/api/v1/namespaces/nope/services", r#"{"metadata":{"name":"c"},"spec":{"ports":[{"port":80}]}}"#);
        assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")));

        // Still serving: a valid Service is created and gets a cluster IP.
        let (code, body) = request(addr, "POST", svcs, r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"ok"},"spec":{"ports":[{"port":80}]}}"#);
        assert_eq!(code, 201, "{body}");
        assert!(body["spec"]["clusterIP"].as_str().unwrap().starts_with("10.96."));
        let (code, _) = request(addr, "POST", svcs, r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"ok"},"spec":{"ports":[{"port":80}]}}"#);
        assert_eq!(code, 409);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_and_deletecollection() {
    let addr = start().await;
    tokio::task::spawn_blocking(move || {
        let svcs = "/api/v1/namespaces/default/services";
        for i in 0..5 {
            let (code, _) = request(addr, "POST", svcs, &format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"s{i}","labels":{{"batch":"{}"}}}},"spec":{{"ports":[{{"port":80}}]}}}}"#,
                i % 2
            ));
            assert_eq!(code, 201);
        }
        let (_, page1) = request(addr, "GET", &format!("{svcs}?limit=2"), "");
        assert_eq!(page1["items"].as_array().unwrap().len(), 2);
        let token = page1["metadata"]["continue"].as_str().unwrap().to_owned();
        let (_, page2) = request(addr, "GET", &format!("{svcs}?limit=2&continue={token}"), "");
        let (_, page3) = request(addr, "GET", &format!("{svcs}?limit=2&continue={}", page2["metadata"]["continue"].as_str().unwrap()), "");
        assert_eq!(page3["items"].as_array().unwrap().len(), 1);
        assert!(page3["metadata"]["continue"].is_null());
        let (code, gone) = request(addr, "DELETE", &format!("{svcs}?labelSelector=batch%3D0"), "");
        assert_eq!(code, 200);
        assert_eq!(gone["items"].as_array().unwrap().len(), 3);
        let (_, rest) = request(addr, "GET", svcs, "");
        assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_load_balancers_get_a_health_check_node_port_and_watches_get_bookmarks() {
    let addr = start().await;
    tokio::task::spawn_blocking(move || {
        let svcs = "/api/v1/namespaces/default/services";
        let (code, body) = request(addr, "POST", svcs, r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"lb"},"spec":{"type":"LoadBalancer","externalTrafficPolicy":"Local","ports":[{"port":80}]}}"#);
        assert_eq!(code, 201, "{body}");
        let np = body["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        let hc = body["spec"]["healthCheckNodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np) && (30000..=32767).contains(&hc) && np != hc, "{body}");

        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {svcs}?watch=true&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.contains("\"type\":\"ADDED\""), "the current objects first: {text}");
        assert!(text.contains("\"type\":\"BOOKMARK\""), "a bookmark within the timeout: {text}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_come_from_the_configured_range_and_are_never_shared() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = control_plane::api::App::new(("10.96.0.0".parse().unwrap(), 1 << 16))
        .with_node_port_range((31000, 31002));
    tokio::spawn(control_plane::serve_app(listener, std::sync::Arc::new(app)));
    tokio::task::spawn_blocking(move || {
        let svcs = "/api/v1/namespaces/default/services";
        let node_port = |name: &str, ports: &str| {
            format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"type":"NodePort","ports":[{ports}]}}}}"#)
        };
        let (code, body) = request(addr, "POST", svcs, &node_port("a", r#"{"name":"x","port":80},{"name":"y","port":81}"#));
        assert_eq!(code, 201, "{body}");
        let got: Vec<i64> = body["spec"]["ports"].as_array().unwrap().iter().map(|p| p["nodePort"].as_i64().unwrap()).collect();
        assert_eq!(got, [31000, 31001]);

        let (code, body) = request(addr, "POST", svcs, &node_port("b", r#"{"port":80,"nodePort":31001}"#));
        assert_eq!(code, 422, "{body}");
        assert!(body["message"].as_str().unwrap().contains("spec.ports[0].nodePort: Invalid value: 31001: provided port is already allocated"), "{body}");

        let (code, body) = request(addr, "POST", svcs, &node_port("c", r#"{"port":80,"nodePort":30000}"#));
        assert_eq!(code, 422, "outside the configured range: {body}");

        let (code, body) = request(addr, "POST", svcs, &node_port("d", r#"{"port":80}"#));
        assert_eq!((code, body["spec"]["ports"][0]["nodePort"].as_i64()), (201, Some(31002)), "{body}");

        let (code, body) = request(addr, "POST", svcs, &node_port("e", r#"{"port":80}"#));
        assert_eq!((code, body["reason"].as_str()), (500, Some("InternalError")), "{body}");
        assert!(body["message"].as_str().unwrap().contains("range 31000-31002 is full"), "{body}");

        // Deleting a Service frees its ports.
        let (code, _) = request(addr, "DELETE", &format!("{svcs}/a"), "");
        assert_eq!(code, 200);
        let (code, body) = request(addr, "POST", svcs, &node_port("e", r#"{"port":80}"#));
        assert_eq!((code, body["spec"]["ports"][0]["nodePort"].as_i64()), (201, Some(31000)), "{body}");
    })
    .await
    .unwrap();
}

/// A merge patch.
fn patch(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    request_as(addr, "PATCH", path, "application/merge-patch+json", body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_updates_are_validated_and_keep_their_allocations() {
    let addr = start().await;
    tokio::task::spawn_blocking(move || {
        let svcs = "/api/v1/namespaces/default/services";
        let svc = format!("{svcs}/u");
        let (code, created) = request(addr, "POST", svcs, r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"u"},"spec":{"ports":[{"port":80}]}}"#);
        assert_eq!(code, 201, "{created}");
        let ip = created["spec"]["clusterIP"].clone();

        // Becoming a NodePort Service allocates a node port; the cluster IP stays.
        let (code, body) = patch(addr, &svc, r#"{"spec":{"type":"NodePort"}}"#);
        assert_eq!(code, 200, "{body}");
        let node_port = body["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&node_port), "{body}");
        assert_eq!(body["spec"]["clusterIP"], ip);

        let (code, body) = patch(addr, &svc, r#"{"spec":{"clusterIP":"10.96.9.9"}}"#);
        assert_eq!(code, 422, "{body}");
        assert!(body["message"].as_str().unwrap().contains("field is immutable"), "{body}");

        let (code, body) = patch(addr, &svc, r#"{"spec":{"ports":[{"port":0,"protocol":"ICMP"}]}}"#);
        assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")), "{body}");
        let fields: Vec<&str> = body["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&"spec.ports[0].port") && fields.contains(&"spec.ports[0].protocol"), "{body}");

        // A PUT that leaves the node port and cluster IP out keeps both.
        let (_, mut current) = request(addr, "GET", &svc, "");
        current["metadata"]["labels"] = serde_json::json!({"changed": "yes"});
        current["spec"]["ports"][0]["nodePort"] = serde_json::Value::Null;
        current["spec"]["clusterIP"] = serde_json::Value::Null;
        let (code, body) = request(addr, "PUT", &svc, &current.to_string());
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["spec"]["ports"][0]["nodePort"].as_i64(), Some(node_port));
        assert_eq!(body["spec"]["clusterIP"], ip);
        assert_eq!(body["metadata"]["labels"]["changed"], "yes");

        // Another Service cannot take that node port by an update either.
        let (code, _) = request(addr, "POST", svcs, r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"v"},"spec":{"type":"NodePort","ports":[{"port":80}]}}"#);
        assert_eq!(code, 201);
        let (code, body) = patch(addr, &format!("{svcs}/v"), &format!(r#"{{"spec":{{"ports":[{{"port":80,"nodePort":{node_port}}}]}}}}"#));
        assert_eq!(code, 422, "{body}");
        assert!(body["message"].as_str().unwrap().contains("provided port is already allocated"), "{body}");
    })
    .await
    .unwrap();
}

/// Writes that would corrupt the store are refused as kube-apiserver refuses them: a patch that
/// renames the object, a body for another namespace, names no client could address again,
/// oversized annotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_would_corrupt_the_store_are_refused() {
    let addr = start().await;
    tokio::task::spawn_blocking(move || {
        let svcs = "/api/v1/namespaces/default/services";
        let svc = |name: &str| {
            format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"ports":[{{"port":80}}]}}}}"#)
        };
        assert_eq!(request(addr, "POST", svcs, &svc("s1")).0, 201);

        // A JSON patch that replaces the name.
        let (code, body) = request_as(
            addr,
            "PATCH",
            &format!("{svcs}/s1"),
            "application/json-patch+json",
            r#"[{"op":"replace","path":"/metadata/name","value":"zzz"}]"#,
        );
        assert_eq!(code, 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains("does not match the name on the URL"), "{body}");
        let (code, body) = request(addr, "GET", &format!("{svcs}/s1"), "");
        assert_eq!((code, body["metadata"]["name"].as_str()), (200, Some("s1")));
        let (_, list) = request(addr, "GET", svcs, "");
        assert_eq!(list["items"].as_array().unwrap().len(), 1, "no second object: {list}");

        // A body whose namespace is not the URL's.
        let moved = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s2","namespace":"kube-system"},"spec":{"ports":[{"port":80}]}}"#;
        let (code, body) = request(addr, "POST", svcs, moved);
        assert_eq!(code, 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains("namespace"), "{body}");

        // Names that break the rules.
        for bad in ["a%2Fb", "..", "UPPER_case", "h%C3%A9llo", &"x".repeat(300)] {
            let name = bad.replace("%2F", "/").replace("%C3%A9", "é");
            let (code, body) = request(addr, "POST", svcs, &svc(&name));
            assert_eq!(code, 422, "{bad}: {body}");
            assert_eq!(body["reason"], "Invalid", "{bad}: {body}");
            // Percent-encoded in a path, the name is decoded before it is checked.
            let (code, _) = request(addr, "PUT", &format!("{svcs}/{bad}"), &svc(&name));
            assert!(code == 422 || code == 400, "{bad}: PUT gave {code}");
        }

        // Annotations over 256 KiB in total.
        let big = "x".repeat(300 * 1024);
        let annotated = format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"s3","annotations":{{"a":"{big}"}}}},"spec":{{"ports":[{{"port":80}}]}}}}"#);
        let (code, body) = request(addr, "POST", svcs, &annotated);
        assert_eq!(code, 422, "{body}");
        assert!(body["message"].as_str().unwrap().contains("annotations"), "{body}");
    })
    .await
    .unwrap();
}

/// Deleting a namespace deletes what is in it (watchers see each deletion) and then the
/// namespace; the system namespaces cannot be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_terminate_with_their_objects() {
    let addr = start().await;
    tokio::task::spawn_blocking(move || {
        let (code, _) = request(addr, "POST", "/api/v1/namespaces", r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team"}}"#);
        assert_eq!(code, 201);
        let svcs = "/api/v1/namespaces/team/services";
        for name in ["a", "b"] {
            let body = format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"ports":[{{"port":80}}]}}}}"#);
            assert_eq!(request(addr, "POST", svcs, &body).0, 201);
        }
        let (_, list) = request(addr, "GET", "/api/v1/services", "");
        let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_owned();

        let (code, body) = request(addr, "DELETE", "/api/v1/namespaces/team", "");
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"]["phase"], "Terminating", "{body}");
        let (_, list) = request(addr, "GET", svcs, "");
        assert!(list["items"].as_array().unwrap().is_empty(), "{list}");
        let (code, _) = request(addr, "GET", "/api/v1/namespaces/team", "");
        assert_eq!(code, 404);
        // A watch from before the deletion sees both Services deleted.
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET /api/v1/namespaces/team/services?watch=1&resourceVersion={rv}&timeoutSeconds=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert_eq!(text.matches("\"DELETED\"").count(), 2, "{text}");
        // New content in it is refused once it is gone; the system namespaces stay.
        let (code, _) = request(addr, "POST", svcs, r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"c"},"spec":{"ports":[{"port":80}]}}"#);
        assert_eq!(code, 404);
        for ns in ["default", "kube-system"] {
            let (code, body) = request(addr, "DELETE", &format!("/api/v1/namespaces/{ns}"), "");
            assert_eq!(code, 403, "{ns}: {body}");
            assert_eq!(body["kind"], "Status");
            assert_eq!(request(addr, "GET", &format!("/api/v1/namespaces/{ns}"), "").0, 200);
        }
    })
    .await
    .unwrap();
}

/// Malformed parameters and bodies are 400s (or 413, 415), each a `Status`, never ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_status_errors() {
    let addr = start().await;
    tokio::task::spawn_blocking(move || {
        let svcs = "/api/v1/namespaces/default/services";
        for (path, expect) in [
            (format!("{svcs}?limit=abc"), "limit"),
            (format!("{svcs}?continue=zz"), "continue"),
            (format!("{svcs}?fieldSelector=metadata.name"), "field selector"),
            (format!("{svcs}?watch=maybe"), "watch"),
            (format!("{svcs}?watch=1&resourceVersion=abc"), "resourceVersion"),
        ] {
            let (code, body) = request(addr, "GET", &path, "");
            assert_eq!(code, 400, "{path}: {body}");
            assert_eq!(body["kind"], "Status", "{path}");
            assert!(body["message"].as_str().unwrap().contains(expect), "{path}: {body}");
        }
        for body in ["[]", "null", "42"] {
            let (code, answer) = request(addr, "POST", svcs, body);
            assert_eq!(code, 400, "{body}: {answer}");
            assert_eq!(answer["kind"], "Status");
        }
        assert_eq!(request(addr, "POST", svcs, r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"p"},"spec":{"ports":[{"port":80}]}}"#).0, 201);
        let (code, body) = request_as(addr, "PATCH", &format!("{svcs}/p"), "application/apply-patch+yaml", "{}");
        assert_eq!(code, 415, "{body}");
        assert_eq!(body["kind"], "Status");
        // A body declared over the limit is refused before it is sent (sending it while the
        // server closes would race: the client's write fails, or the answer is reset away).
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "POST {svcs} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", 4 * 1024 * 1024).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert_eq!(&text[9..12], "413", "{text}");
        assert!(text.contains("\"kind\":\"Status\""), "{text}");
    })
    .await
    .unwrap();
}
