//! Running iptables: `-restore` with the rules on stdin, `-save`, and single commands.
//!
//! Rules are never put on a command line: the restore text goes to stdin, and the few single
//! commands (ensuring jump rules) are built from constants. Nothing from the cluster reaches argv.

use std::fmt;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

use proxy_core::IpFamily;

/// Which iptables backend: the nf_tables-based one or the legacy x_tables one. Both may be
/// installed; the one that already holds rules must be used, or rules end up split across two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `iptables-nft`.
    Nft,
    /// `iptables-legacy`.
    Legacy,
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
        })
    }
}

/// An iptables invocation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
        /// The line it blamed (`Error occurred at line: N`), if any.
        line: Option<usize>,
    },
    /// Writing its input failed.
    #[error("writing to {program}: {source}")]
    Write {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The operations the proxier needs from iptables.
pub trait IptablesOps: Send + fmt::Debug {
    /// Runs `iptables-restore --noflush` with the text `write` produces on stdin.
    fn restore(
        &mut self,
        write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), ExecError>;
    /// `iptables-save -t <table>`.
    fn save(&mut self, table: &str) -> Result<String, ExecError>;
    /// `iptables -w <args>`; `Ok(false)` when it ran and exited non-zero (e.g. `-C` not found).
    fn run(&mut self, args: &[&str]) -> Result<bool, ExecError>;
    /// `iptables -w -t <table> -S <chain>`: one chain's rules, as `-A <chain> …` lines. Much cheaper
    /// than saving the whole table when the table holds 20,000 Services' rules.
    fn list_chain(&mut self, table: &str, chain: &str) -> Result<String, ExecError>;
}

/// Makes a child die with kproxy: an `iptables-restore` left running by a killed kproxy would
/// land its rules after its successor's first sync (a rolling restart), leaving chains nobody
/// owns. A restore is atomic per table, so killing it applies nothing.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only prctl(2) runs, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The real iptables binaries of one variant and family.
#[derive(Debug, Clone)]
pub struct IptablesCmd {
    variant: Variant,
    family: IpFamily,
}

impl IptablesCmd {
    /// Commands for `variant` and `family`.
    pub fn new(variant: Variant, family: IpFamily) -> Self {
        Self { variant, family }
    }

    /// The variant.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    fn program(&self, suffix: &str) -> String {
        let base = match self.family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        format!("{base}-{}{suffix}", self.variant)
    }
}

fn blamed_line(stderr: &str) -> Option<usize> {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Error occurred at line:"))
        .and_then(|n| n.trim().parse().ok())
}

impl IptablesOps for IptablesCmd {
    fn restore(
        &mut self,
        write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), ExecError> {
        let program = self.program("-restore");
        let mut child = die_with_parent(&mut Command::new(&program))
            .args(["--noflush", "--wait", "5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ExecError::Spawn {
                program: program.clone(),
                source,
            })?;
        // Drain stderr concurrently so a chatty failure cannot block our writes.
        let mut stderr = child.stderr.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut stdin = io::BufWriter::with_capacity(1 << 16, child.stdin.take().expect("piped"));
        let written = write(&mut stdin).and_then(|()| stdin.flush());
        drop(stdin);
        let status = child.wait().map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })?;
        let stderr = reader.join().unwrap_or_default();
        if !status.success() {
            return Err(ExecError::Failed {
                line: blamed_line(&stderr),
                program,
                status: status.to_string(),
                stderr: stderr.trim().to_owned(),
            });
        }
        written.map_err(|source| ExecError::Write { program, source })
    }

    fn save(&mut self, table: &str) -> Result<String, ExecError> {
        let program = self.program("-save");
        let out = Command::new(&program)
            .args(["-t", table])
            .output()
            .map_err(|source| ExecError::Spawn {
                program: program.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(ExecError::Failed {
                line: None,
                program,
                status: out.status.to_string(),
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(&mut self, args: &[&str]) -> Result<bool, ExecError> {
        let program = self.program("");
        let out = Command::new(&program)
            .arg("-w")
            .args(args)
            .output()
            .map_err(|source| ExecError::Spawn {
                program: program.clone(),
                source,
            })?;
        Ok(out.status.success())
    }

    fn list_chain(&mut self, table: &str, chain: &str) -> Result<String, ExecError> {
        let program = self.program("");
        let out = Command::new(&program)
            .args(["-w", "-t", table, "-S", chain])
            .output()
            .map_err(|source| ExecError::Spawn {
                program: program.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(ExecError::Failed {
                line: None,
                program,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Picks the variant the way kube-proxy's images do: the variant that already holds more rules
/// wins (so kproxy joins whatever the node uses); with none anywhere, nft.
pub fn detect_variant(family: IpFamily) -> Variant {
    // `None` when the variant cannot list any table: its tools are missing, or (nft) the kernel
    // has no nf_tables for this family, as in user-mode-linux kernels.
    let count = |variant| {
        let mut cmd = IptablesCmd::new(variant, family);
        let saved: Vec<String> = ["filter", "nat", "mangle"]
            .iter()
            .filter_map(|t| cmd.save(t).ok())
            .collect();
        (!saved.is_empty()).then(|| {
            saved
                .iter()
                .flat_map(|s| s.lines())
                .filter(|l| l.starts_with("-A "))
                .count()
        })
    };
    match (count(Variant::Legacy), count(Variant::Nft)) {
        (Some(_), None) => Variant::Legacy,
        (Some(legacy), Some(nft)) if legacy > 0 && legacy > nft => Variant::Legacy,
        _ => Variant::Nft,
    }
}
