//! `kproxy-control-plane`: the API server for kproxy's integration tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// A Kubernetes API server for integration tests (plain HTTP, in memory).
#[derive(Debug, Parser)]
#[command(name = "kproxy-control-plane", version)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write a kubeconfig for clients here.
    #[arg(long, value_name = "PATH")]
    kubeconfig_out: Option<PathBuf>,
    /// Keep objects in DIR (an embedded database): a restarted server serves the same objects and
    /// resourceVersions. Without it, everything is in memory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The Service cluster IP range (IPv4 CIDR).
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cluster_ip_range: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (net, prefix) = args
        .service_cluster_ip_range
        .split_once('/')
        .context("--service-cluster-ip-range must be a CIDR")?;
    let net: Ipv4Addr = net.parse().context("--service-cluster-ip-range address")?;
    let prefix: u32 = prefix
        .parse()
        .context("--service-cluster-ip-range prefix")?;
    anyhow::ensure!(
        (8..=30).contains(&prefix),
        "--service-cluster-ip-range prefix must be 8-30"
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .context("binding")?;
    let addr = listener.local_addr()?;
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, control_plane::kubeconfig(addr)).context("writing the kubeconfig")?;
    }
    tracing::info!("serving the Kubernetes API on http://{addr}");
    let range = (net, 1u32 << (32 - prefix));
    let store = match &args.data_dir {
        Some(dir) => control_plane::store::Store::open(10_000, dir)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", dir.display()))?,
        None => control_plane::store::Store::new(10_000),
    };
    let app = std::sync::Arc::new(control_plane::api::App::with_store(store, range));
    control_plane::serve_app(listener, app).await?;
    Ok(())
}
