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
    /// The inclusive range NodePorts (and health-check node ports) are allocated from.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: (i64, i64),
}

/// `LOW-HIGH`, as kube-apiserver's `--service-node-port-range` takes it.
fn parse_port_range(text: &str) -> Result<(i64, i64), String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not LOW-HIGH"))?;
    let low: i64 = low.trim().parse().map_err(|e| format!("{low:?}: {e}"))?;
    let high: i64 = high.trim().parse().map_err(|e| format!("{high:?}: {e}"))?;
    if !(1..=65535).contains(&low) || !(low..=65535).contains(&high) {
        return Err(format!("{text:?}: need 1 <= LOW <= HIGH <= 65535"));
    }
    Ok((low, high))
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
    let app = std::sync::Arc::new(
        control_plane::api::App::with_store(store, range)
            .with_node_port_range(args.service_node_port_range),
    );
    control_plane::serve_app(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_port_range;

    #[test]
    fn node_port_ranges() {
        assert_eq!(parse_port_range("30000-32767"), Ok((30000, 32767)));
        assert_eq!(parse_port_range("80-80"), Ok((80, 80)));
        for bad in ["30000", "32767-30000", "0-10", "1-70000", "a-b"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }
}
