//! The command line, in kube-proxy's spelling where kube-proxy has the flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// kproxy: a kube-proxy replacement.
#[derive(Debug, Parser)]
#[command(name = "kproxy", version, about)]
pub(crate) struct Cli {
    /// Log verbosity (kube-proxy's `-v`): 0-1 info, 2-3 debug, 4+ trace.
    #[arg(short = 'v', long = "v", global = true, default_value_t = 0)]
    pub(crate) verbosity: u8,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print the desired state computed from manifests: every Service port, its endpoints and the
    /// endpoint selection for this node. Needs no cluster and no root.
    State(StateArgs),
}

/// The IP family to compute the state for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// Where the objects come from and which node we are.
#[derive(Debug, Args)]
pub(crate) struct ManifestArgs {
    /// A YAML manifest file or a directory of them (repeatable). Without it, the bundled examples.
    #[arg(short = 'f', long = "filename", value_name = "FILE_OR_DIR")]
    pub(crate) files: Vec<PathBuf>,

    /// The node name to act as (kube-proxy's `--hostname-override`). Defaults to the bundled
    /// examples' node without `-f`, and to this host's name with it.
    #[arg(long, value_name = "NODE")]
    pub(crate) hostname_override: Option<String>,

    /// Program only Services labelled `service.kubernetes.io/service-proxy-name` with this value.
    #[arg(long, value_name = "NAME")]
    pub(crate) service_proxy_name: Option<String>,
}

/// `kproxy state`.
#[derive(Debug, Args)]
pub(crate) struct StateArgs {
    #[command(flatten)]
    pub(crate) manifests: ManifestArgs,

    /// The IP family.
    #[arg(long, value_enum, default_value_t = Family::Ipv4)]
    pub(crate) ip_family: Family,
}
