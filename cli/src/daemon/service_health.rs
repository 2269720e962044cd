//! The health-check node port server: one HTTP listener per `healthCheckNodePort`, answering
//! what [`proxy_core::service_health`] decided (200 with a ready local endpoint, 503 without),
//! whatever the proxy mode.
//!
//! Listeners follow the published map: a new port is bound, a port that is gone is closed. A port
//! that cannot be bound (taken by something else) is logged and tried again at the next change.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use proxy_core::service_health::ServiceHealthEntry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Shared;

/// Keeps one listener per published port until the daemon stops (the task is aborted then).
pub(crate) async fn serve(shared: Arc<Shared>) {
    let mut updates = shared.service_health.subscribe();
    let mut listeners: HashMap<u16, JoinHandle<()>> = HashMap::new();
    loop {
        let wanted: Vec<u16> = updates.borrow_and_update().keys().copied().collect();
        listeners.retain(|port, task| {
            let keep = wanted.contains(port) && !task.is_finished();
            if !keep {
                task.abort();
                tracing::info!("health-check node port {port} closed");
            }
            keep
        });
        for port in wanted {
            if listeners.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!("health-check node port {port} listening");
                    let app = Router::new().fallback({
                        let shared = Arc::clone(&shared);
                        let answers = updates.clone();
                        move || answer(port, answers.clone(), Arc::clone(&shared))
                    });
                    listeners.insert(
                        port,
                        tokio::spawn(async move {
                            if let Err(e) = axum::serve(listener, app).await {
                                tracing::warn!("health-check node port {port}: {e}");
                            }
                        }),
                    );
                }
                Err(e) => tracing::warn!("cannot listen on health-check node port {port}: {e}"),
            }
        }
        if updates.changed().await.is_err() {
            return;
        }
    }
}

async fn answer(
    port: u16,
    answers: watch::Receiver<BTreeMap<u16, ServiceHealthEntry>>,
    shared: Arc<Shared>,
) -> Response {
    let entry = answers.borrow().get(&port).cloned();
    let Some(entry) = entry else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no service on this port\n").into_response();
    };
    let proxy_healthy = shared
        .health
        .lock()
        .expect("health lock")
        .healthz(SystemTime::now())
        .healthy;
    let status = if entry.healthy() && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, entry.body(proxy_healthy)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("x-load-balancing-endpoint-weight"),
        HeaderValue::from(entry.local_endpoints),
    );
    response
}
