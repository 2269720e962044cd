//! Runs a program inside a user-mode-linux (UML) kernel: kproxy's way to test IPVS mode on a
//! machine whose own kernel has no IP_VS and loads no modules.
//!
//! Debian's `user-mode-linux` package ships a 6.1 kernel as an ordinary executable
//! (`/usr/bin/linux.uml`) with its modules (`/usr/lib/uml/modules/<version>`): IP_VS and its
//! schedulers, dummy and veth links, ipset, legacy xtables, conntrack. [`UmlKernel::run`] boots
//! it with the host's root file system mounted read-write through hostfs, so the program to run
//! is the host's own binary (a test binary under `target/`), with an init script that mounts
//! `/proc`, `/sys`, a private `/run` and `/dev`, loads the modules with one `modprobe -a` (a
//! symlinked module tree in the run's work directory stands in for `/lib/modules`), runs the
//! program with its output in the work directory, writes its exit status there and powers off.
//! A boot takes about two seconds.
//!
//! Everything the run leaves is in its work directory under the system temp directory (UML's
//! `uml_dir` too, so nothing lands in the home directory), removed when the run ends unless
//! `KPROXY_UML_KEEP` is set.
//!
//! Inside, [`inside`] is true (the environment carries [`INSIDE_ENV`]); tests meant only for the
//! UML kernel check it. The usual pattern is one host test that boots the kernel once and runs
//! the same test binary inside with `--ignored <filter>`: see [`UmlKernel::run_test_binary`].
#![warn(missing_docs, missing_debug_implementations)]

pub mod pods;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable set for the program inside the UML kernel.
pub const INSIDE_ENV: &str = "KPROXY_IN_UML";

/// The modules every run loads: IPVS with the schedulers kube-proxy offers, conntrack and NAT,
/// links (dummy for `kube-ipvs0`, veth and bridge for namespaces), ipset types and the legacy
/// xtables matches and targets kube-proxy's rules use.
pub const DEFAULT_MODULES: &[&str] = &[
    "nf_conntrack",
    "nf_conntrack_netlink",
    "nf_nat",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_sh",
    "ip_vs_mh",
    "ip_vs_sed",
    "ip_vs_nq",
    "dummy",
    "veth",
    "bridge",
    "br_netfilter",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_bitmap_port",
    "ip_tables",
    "iptable_nat",
    "iptable_filter",
    "iptable_mangle",
    "iptable_raw",
    "ip6_tables",
    "ip6table_nat",
    "ip6table_filter",
    "ip6table_mangle",
    "ipt_REJECT",
    "ip6t_REJECT",
    "xt_comment",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_conntrack",
    "xt_addrtype",
    "xt_set",
    "xt_multiport",
    "xt_statistic",
    "xt_recent",
    "xt_tcpudp",
    "xt_nat",
    "xt_physdev",
    "xt_ipvs",
    "xt_REDIRECT",
    "xt_nfacct",
    "nfnetlink_acct",
];

/// The kernel for a host test that boots it: `None` inside the kernel already (the host test has
/// nothing to do there) or where the harness cannot run, printing why (`what` names the tests
/// skipped).
pub fn kernel_or_skip(what: &str) -> Option<UmlKernel> {
    if inside() {
        return None;
    }
    match UmlKernel::find() {
        Ok(k) => Some(k),
        Err(why) => {
            eprintln!("skipping {what}: {why}");
            None
        }
    }
}

/// Whether this process runs inside a UML kernel started by [`UmlKernel::run`].
pub fn inside() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

/// Why the harness cannot run here (a test prints it and skips).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// `linux.uml` is not installed.
    #[error("no user-mode-linux kernel at {0} (apt-get install user-mode-linux)")]
    NoKernel(PathBuf),
    /// The modules directory is missing.
    #[error("no user-mode-linux modules under {0}")]
    NoModules(PathBuf),
    /// A tool the init script needs is missing.
    #[error("{tool} not found (apt-get install {package})")]
    NoTool {
        /// The tool.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// Not root: hostfs would map files to an unprivileged user and module loading fails.
    #[error("the UML harness needs root")]
    NotRoot,
}

/// What went wrong running a program in the UML kernel.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Preparing or starting the run failed.
    #[error("uml harness: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel did not power off in time (it was killed).
    #[error("the UML kernel did not finish within {0:?}; console:\n{1}")]
    Timeout(Duration, String),
    /// The kernel powered off without the program's exit status: it did not boot, or the init
    /// script failed before the program ran.
    #[error("the UML kernel stopped without running the program; console:\n{0}")]
    NoStatus(String),
}

/// A user-mode-linux kernel with its modules.
#[derive(Clone, Debug)]
pub struct UmlKernel {
    linux: PathBuf,
    modules: PathBuf,
    version: String,
}

/// One program to run inside the kernel.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The program (a host path: the host's file system is the UML root).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment (besides `PATH` and [`INSIDE_ENV`]).
    pub env: Vec<(String, String)>,
    /// The working directory (default: the host's current directory).
    pub cwd: Option<PathBuf>,
    /// The kernel's memory in MiB (default 384).
    pub mem_mib: u32,
    /// Modules to load (default [`DEFAULT_MODULES`]).
    pub modules: Vec<String>,
    /// How long the whole run may take before the kernel is killed.
    pub timeout: Duration,
}

impl RunSpec {
    /// `program` with `args`, default memory, modules and a 10-minute limit.
    pub fn new<I, S>(program: impl Into<PathBuf>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            mem_mib: 384,
            modules: DEFAULT_MODULES.iter().map(|m| m.to_string()).collect(),
            timeout: Duration::from_secs(600),
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The program's exit status.
    pub status: i32,
    /// The program's stdout and stderr, interleaved.
    pub output: String,
    /// What the init script printed (module loading) and the kernel's console.
    pub console: String,
    /// From start to power-off.
    pub elapsed: Duration,
}

impl RunOutcome {
    /// Whether the program exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

impl UmlKernel {
    /// Finds Debian's UML kernel and its modules, and checks the tools the init script uses.
    pub fn find() -> Result<Self, Unavailable> {
        let linux = PathBuf::from("/usr/bin/linux.uml");
        if !linux.is_file() {
            return Err(Unavailable::NoKernel(linux));
        }
        let base = PathBuf::from("/usr/lib/uml/modules");
        let version = std::fs::read_dir(&base)
            .ok()
            .and_then(|dir| {
                dir.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|v| base.join(v).join("modules.dep").is_file())
                    .max()
            })
            .ok_or_else(|| Unavailable::NoModules(base.clone()))?;
        for (tool, package) in [("modprobe", "kmod"), ("ip", "iproute2")] {
            if which(tool).is_none() {
                return Err(Unavailable::NoTool { tool, package });
            }
        }
        if !nix_is_root() {
            return Err(Unavailable::NotRoot);
        }
        Ok(Self {
            linux,
            modules: base.join(&version),
            version,
        })
    }

    /// The kernel's release (`6.1.176`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Boots the kernel, runs `spec.program` inside and returns its status and output.
    pub fn run(&self, spec: &RunSpec) -> Result<RunOutcome, HarnessError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| HarnessError::Io { what, source }
        };
        let work = WorkDir::new().map_err(io("creating the work directory"))?;
        let dir = work.path();
        let module_root = dir.join("modroot");
        std::fs::create_dir_all(module_root.join("lib/modules"))
            .map_err(io("creating the module tree"))?;
        std::os::unix::fs::symlink(
            &self.modules,
            module_root.join("lib/modules").join(&self.version),
        )
        .map_err(io("linking the modules"))?;
        let uml_dir = dir.join("uml");
        std::fs::create_dir_all(&uml_dir).map_err(io("creating uml_dir"))?;
        let init = dir.join("init.sh");
        std::fs::write(&init, self.init_script(spec, dir, &module_root))
            .map_err(io("writing the init script"))?;
        std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io("making the init script executable"))?;

        let start = Instant::now();
        let console_path = dir.join("console.log");
        let console_file =
            std::fs::File::create(&console_path).map_err(io("creating the console log"))?;
        let mut child = Command::new(&self.linux)
            .arg(format!("mem={}M", spec.mem_mib))
            .arg("rootfstype=hostfs")
            .arg("rootflags=/")
            .arg("rw")
            .arg(format!("init={}", init.display()))
            .arg("con0=fd:0,fd:1")
            .arg("con=null")
            .arg("quiet")
            .arg(format!("uml_dir={}", uml_dir.display()))
            .stdin(Stdio::null())
            .stdout(
                console_file
                    .try_clone()
                    .map_err(io("sharing the console log"))?,
            )
            .stderr(console_file)
            .spawn()
            .map_err(io("starting linux.uml"))?;
        let finished = loop {
            match child.try_wait().map_err(io("waiting for linux.uml"))? {
                Some(_) => break true,
                None if start.elapsed() > spec.timeout => break false,
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let read = |p: &Path| {
            let mut s = String::new();
            if let Ok(mut f) = std::fs::File::open(p) {
                let mut bytes = Vec::new();
                let _ = f.read_to_end(&mut bytes);
                s = String::from_utf8_lossy(&bytes).into_owned();
            }
            s
        };
        if !finished {
            let _ = child.kill();
            let _ = child.wait();
            let mut console = read(&console_path);
            console.push_str(&read(&dir.join("output.log")));
            return Err(HarnessError::Timeout(spec.timeout, console));
        }
        let console = read(&console_path);
        let output = read(&dir.join("output.log"));
        let status = read(&dir.join("status"));
        let Ok(status) = status.trim().parse::<i32>() else {
            return Err(HarnessError::NoStatus(format!("{console}\n{output}")));
        };
        Ok(RunOutcome {
            status,
            output,
            console,
            elapsed: start.elapsed(),
        })
    }

    /// Runs the test binary `exe` (usually `std::env::current_exe()`) inside the kernel with
    /// `--ignored --test-threads=1 --nocapture <filter>`: the ignored tests whose names contain
    /// `filter` (or `KPROXY_UML_FILTER`, when set, to narrow them while debugging), one after
    /// another. Their output is passed through to this process's stdout.
    pub fn run_test_binary(
        &self,
        exe: &Path,
        filter: &str,
        mut spec_edit: impl FnMut(&mut RunSpec),
    ) -> Result<RunOutcome, HarnessError> {
        let narrowed = std::env::var("KPROXY_UML_FILTER").ok();
        let filter = narrowed.as_deref().unwrap_or(filter);
        let mut spec = RunSpec::new(
            exe,
            [
                "--ignored",
                "--test-threads=1",
                "--nocapture",
                "--color=never",
                filter,
            ],
        );
        spec_edit(&mut spec);
        let outcome = self.run(&spec)?;
        print!("{}", outcome.output);
        Ok(outcome)
    }

    fn init_script(&self, spec: &RunSpec, dir: &Path, module_root: &Path) -> String {
        let q = |s: &std::ffi::OsStr| shell_quote(&s.to_string_lossy());
        let mut s = String::new();
        let _ = writeln!(s, "#!/bin/sh");
        let _ = writeln!(
            s,
            "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        );
        let _ = writeln!(s, "export {INSIDE_ENV}=1");
        let _ = writeln!(s, "mount -t proc proc /proc");
        let _ = writeln!(s, "mount -t sysfs sys /sys");
        let _ = writeln!(s, "mount -t tmpfs tmpfs /run");
        let _ = writeln!(s, "mount -t devtmpfs devtmpfs /dev 2>/dev/null");
        let _ = writeln!(s, "mkdir -p /run/netns");
        let _ = writeln!(s, "ip link set lo up");
        let _ = writeln!(
            s,
            "modprobe -d {} -a {} || echo 'uml-testbed: some modules did not load'",
            q(module_root.as_os_str()),
            spec.modules.join(" ")
        );
        for (k, v) in &spec.env {
            let _ = writeln!(s, "export {k}={}", shell_quote(v));
        }
        let cwd = spec
            .cwd
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/"));
        let _ = writeln!(s, "cd {}", q(cwd.as_os_str()));
        let mut cmd = q(spec.program.as_os_str());
        for a in &spec.args {
            cmd.push(' ');
            cmd.push_str(&q(a));
        }
        let out = q(dir.join("output.log").as_os_str());
        let status = q(dir.join("status").as_os_str());
        let _ = writeln!(s, "{cmd} > {out} 2>&1 </dev/null");
        let _ = writeln!(s, "echo $? > {status}");
        let _ = writeln!(s, "sync");
        let _ = writeln!(s, "poweroff -f -d 2>/dev/null || halt -f -d");
        s
    }
}

/// Runs `cmd` with `sh -c` and returns its stdout; panics with the command and its output when
/// it fails. For tests inside the kernel, which set up links and read `ipvsadm`, `ipset` and
/// `iptables` output.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn nix_is_root() -> bool {
    // The real uid, read from /proc to avoid a libc dependency here.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The run's directory, removed on drop unless `KPROXY_UML_KEEP` is set.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "kproxy-uml-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("KPROXY_UML_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("uml-testbed: kept {}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }

    /// Boots the kernel with a shell command: the harness's own end-to-end check.
    #[test]
    fn boots_and_reports_status_and_output() {
        let kernel = match UmlKernel::find() {
            Ok(k) => k,
            Err(why) => {
                eprintln!("skipping: {why}");
                return;
            }
        };
        let mut spec = RunSpec::new(
            "/bin/sh",
            [
                "-c",
                "echo in=$KPROXY_IN_UML; uname -r; cat /proc/net/ip_vs >/dev/null && echo ipvs-ok; exit 7",
            ],
        );
        spec.timeout = Duration::from_secs(120);
        let out = kernel.run(&spec).unwrap();
        assert_eq!(out.status, 7, "{out:?}");
        assert!(out.output.contains("in=1"), "{out:?}");
        assert!(out.output.contains(kernel.version()), "{out:?}");
        assert!(out.output.contains("ipvs-ok"), "{out:?}");
    }
}
