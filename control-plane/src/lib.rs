//! A Kubernetes API server for kproxy's integration tests: it speaks the REST list/watch protocol
//! well enough that `kubectl` and kube-rs work unchanged, keeps objects in memory with monotonic
//! resourceVersions and a bounded watch history (410 beyond it), and allocates cluster IPs and
//! node ports.
//!
//! What it covers, and what it leaves out, is in `docs/control-plane.md`.
#![warn(missing_docs)]

pub mod allocations;
pub mod api;
pub mod connections;
pub mod endpointslice_controller;
pub mod patch;
pub mod persist;
pub mod request_checks;
pub mod selector;
pub mod store;
pub mod validate;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Serves the API on `listener` until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service_range: (Ipv4Addr, u32),
) -> std::io::Result<()> {
    serve_app(listener, Arc::new(api::App::new(service_range))).await
}

/// Serves an existing server state: lets a test stop the API (drop its runtime) and bring it back
/// with the same objects, as an API server restart with durable storage would.
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: Arc<api::App>,
) -> std::io::Result<()> {
    serve_app_with(listener, app, connections::Limits::default()).await
}

/// As [`serve_app`], with these connection limits.
pub async fn serve_app_with(
    listener: tokio::net::TcpListener,
    app: Arc<api::App>,
    limits: connections::Limits,
) -> std::io::Result<()> {
    tokio::spawn(endpointslice_controller::run(Arc::clone(&app)));
    let router = axum::Router::new()
        .fallback(api::handle)
        .with_state(app)
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(api::refuse_large_bodies))
        .layer(axum::middleware::map_response(api::errors_as_status));
    connections::serve(listener, router, limits).await
}

/// A kubeconfig pointing at `addr` over plain HTTP.
pub fn kubeconfig(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kproxy\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: kproxy\n  context:\n    cluster: kproxy\n    user: kproxy\ncurrent-context: kproxy\nusers:\n- name: kproxy\n  user: {{}}\n"
    )
}
