//! `kproxy cleanup` / `kproxy --cleanup`: remove what kproxy created, in every mode it knows.

use backend_iptables::{IptablesCmd, IptablesProxier, Variant};
use proxy_core::IpFamily;

/// Removes kproxy's chains and jump rules from both iptables variants and both families, wherever
/// the binaries exist. Other tools' rules stay. (iptables is the only mode built so far.)
pub(crate) fn run() -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for variant in [Variant::Nft, Variant::Legacy] {
            let mut cmd = IptablesCmd::new(variant, family);
            match IptablesProxier::cleanup_tables(&mut cmd) {
                Ok(()) => tracing::info!("cleaned up iptables-{variant} ({family})"),
                Err(e) => {
                    let text = format!("{:#}", anyhow::Error::new(e));
                    // A variant or family that is not installed has nothing to clean.
                    if text.contains("cannot run") {
                        tracing::debug!("skipping iptables-{variant} ({family}): {text}");
                    } else {
                        failures.push(format!("iptables-{variant} ({family}): {text}"));
                    }
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("cleanup incomplete:\n{}", failures.join("\n"))
    }
}
