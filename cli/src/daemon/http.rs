//! `/healthz`, `/livez` (healthz address) and `/metrics` (metrics address), until SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use proxy_core::health::HealthReport;

use super::{Settings, Shared};

fn answer(report: HealthReport) -> impl IntoResponse {
    let status = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static("x-content-type-options"),
                "nosniff",
            ),
        ],
        report.body,
    )
}

/// Serves both listeners and returns when a termination signal arrives.
pub(crate) async fn serve_until_signal(
    settings: &Settings,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let h = Arc::clone(&shared);
    let l = Arc::clone(&shared);
    let health = Router::new()
        .route(
            "/healthz",
            get(move || {
                let h = Arc::clone(&h);
                async move {
                    answer(
                        h.health
                            .lock()
                            .expect("health lock")
                            .healthz(SystemTime::now()),
                    )
                }
            }),
        )
        .route(
            "/livez",
            get(move || {
                let l = Arc::clone(&l);
                async move {
                    answer(
                        l.health
                            .lock()
                            .expect("health lock")
                            .livez(SystemTime::now()),
                    )
                }
            }),
        );
    let m = Arc::clone(&shared);
    let metrics = Router::new().route(
        "/metrics",
        get(move || {
            let m = Arc::clone(&m);
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.metrics.lock().expect("metrics lock").encode(),
                )
            }
        }),
    );
    let health_listener = tokio::net::TcpListener::bind(settings.healthz)
        .await
        .with_context(|| format!("binding healthz to {}", settings.healthz))?;
    let metrics_listener = tokio::net::TcpListener::bind(settings.metrics)
        .await
        .with_context(|| format!("binding metrics to {}", settings.metrics))?;
    tracing::info!(
        "healthz on {}, metrics on {}",
        settings.healthz,
        settings.metrics
    );
    let health_server = axum::serve(health_listener, health);
    let metrics_server = axum::serve(metrics_listener, metrics);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = health_server => r.context("healthz server")?,
        r = metrics_server => r.context("metrics server")?,
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = shared.stop.notified() => tracing::info!("stopping after a fatal error"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}
