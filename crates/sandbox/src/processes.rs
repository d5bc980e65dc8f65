//! MIC and NMIs as processes of their own: the product binary's `mic` and `nmi` subcommands
//! against the simulators' kubeconfig, azure.json and metadata endpoints, as they run in a
//! cluster. Load tests use them so that each component's CPU time and peak RSS can be read
//! from `/proc/<pid>` apart from the simulators and the driver.
//!
//! The subcommands refuse port 0 (as the original's flags do), so each port is picked free
//! just before the child starts; a child that cannot bind exits, and the error says so.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Why a component process could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process could not be spawned or a file for it written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The process exited or never became healthy; its log's tail is included.
    #[error("{name} did not become ready: {why}\n{log}")]
    NotReady {
        /// The component.
        name: String,
        /// Exit status or timeout.
        why: String,
        /// The last lines of its log.
        log: String,
    },
}

/// CPU time and memory of one process, from `/proc`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
    /// Resident set size now, kB.
    pub rss_kb: u64,
    /// Peak resident set size (`VmHWM`), kB.
    pub peak_rss_kb: u64,
}

impl Usage {
    /// The usage of process `pid` (`None`: this process); zeros once it has exited.
    #[must_use]
    pub fn of(pid: Option<u32>) -> Self {
        let base = pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"));
        let stat = std::fs::read_to_string(format!("{base}/stat")).unwrap_or_default();
        // Fields after the command name (which may contain spaces) in parentheses.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime, in clock ticks (100 per second on Linux).
        let cpu_s = (ticks(11) + ticks(12)) / 100.0;
        let status = std::fs::read_to_string(format!("{base}/status")).unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            cpu_s,
            rss_kb: kb("VmRSS:"),
            peak_rss_kb: kb("VmHWM:"),
        }
    }
}

/// A component running as its own process.
pub struct Component {
    /// `mic` or `nmi-<node>`.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Its `/healthz` address.
    pub probe: SocketAddr,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
    /// Where its output goes.
    pub log: PathBuf,
    child: tokio::process::Child,
    /// The last usage read while it ran (a reaped process has no `/proc` entry).
    last: Usage,
}

impl Component {
    /// CPU and memory now (the last figures read once it has exited).
    pub fn usage(&mut self) -> Usage {
        let u = Usage::of(Some(self.pid));
        // An exited, unreaped process still has a `stat` but no memory figures: keep the last.
        if u.peak_rss_kb > 0 {
            self.last = u;
        }
        self.last
    }

    /// Ends the process (SIGKILL: nothing of it outlives a load test) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Stops the process as the kubelet stops a container: SIGTERM, then SIGKILL if it has
    /// not exited within `grace`. Returns its exit status when it exited by itself.
    pub async fn terminate(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        // `kill -TERM <pid>` of this child only (tokio's Child can only SIGKILL).
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if sent && let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await {
            return Some(status);
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        None
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// What [`start_mic_as`] waits for before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MicReady {
    /// `/healthz` says `Active`: this replica leads.
    Leading,
    /// `/healthz` answers at all (`Not Active` on a standby).
    Serving,
}

/// `n` distinct ports free on `ip` right now (all bound at once while picking, so no two
/// are the same).
///
/// # Errors
/// When no socket can be bound on `ip`.
pub fn free_ports(ip: IpAddr, n: usize) -> std::io::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind(SocketAddr::new(ip, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Starts a component whose ports are picked free by `args_for` (given fresh ports on each
/// try): another process may take a port between the pick and the child's bind, so a child
/// that exits because an address is in use is started again, up to three times.
async fn start_with_ports<T>(
    mut attempt: impl AsyncFnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(Error::NotReady { log, .. })
                if tries < 3 && log.contains("Address already in use") =>
            {
                tries += 1;
            }
            r => return r,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

async fn spawn(
    bin: &Path,
    name: &str,
    dir: &Path,
    args: &[String],
) -> Result<tokio::process::Child, Error> {
    let log = dir.join(format!("{name}.log"));
    // Appended to: a restarted component (chaos) keeps its predecessor's log above its own.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io(format!("creating {}", log.display())))?;
    let err = out.try_clone().map_err(io("duplicating a log file"))?;
    tokio::process::Command::new(bin)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("COMPONENT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(format!("starting {} {name}", bin.display())))
}

/// Waits until `/healthz` at `probe` answers `Active` (bounded), or the child exits.
async fn wait_active(
    name: &str,
    child: &mut tokio::process::Child,
    probe: SocketAddr,
    log: &Path,
) -> Result<(), Error> {
    wait_probe(name, child, probe, log, MicReady::Leading).await
}

/// Waits until `/healthz` at `probe` answers as `ready` asks (bounded), or the child exits.
async fn wait_probe(
    name: &str,
    child: &mut tokio::process::Child,
    probe: SocketAddr,
    log: &Path,
    ready: MicReady,
) -> Result<(), Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| io("building an HTTP client")(std::io::Error::other(e)))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let not_ready = |why: String| Error::NotReady {
        name: name.to_string(),
        why,
        log: tail(log),
    };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(not_ready(format!("exited with {status}")));
        }
        if let Ok(r) = client.get(format!("http://{probe}/healthz")).send().await
            && r.text()
                .await
                .is_ok_and(|t| ready == MicReady::Serving || t.trim() == "Active")
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(not_ready("not Active after 120 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `bin mic` with the simulators' kubeconfig and azure.json, probe and metrics on
/// 127.0.0.1 ports picked free, and waits until it leads (`/healthz` says `Active`).
///
/// # Errors
/// [`Error`] when it cannot start or does not become the leader.
pub async fn start_mic(
    bin: &Path,
    dir: &Path,
    kubeconfig: &Path,
    cloudconfig: &Path,
    extra: &[String],
) -> Result<Component, Error> {
    start_with_ports(async || start_mic_once(bin, dir, kubeconfig, cloudconfig, extra).await).await
}

/// MIC's files and flags, for [`start_mic_as`].
pub struct MicLaunch<'a> {
    /// The product binary.
    pub bin: &'a Path,
    /// Where its log goes.
    pub dir: &'a Path,
    /// The simulated API server's kubeconfig.
    pub kubeconfig: &'a Path,
    /// The Azure simulator's azure.json.
    pub cloudconfig: &'a Path,
    /// More flags.
    pub extra: &'a [String],
}

/// Starts `bin mic` as replica `instance` (its leader-election identity, as a pod's name is),
/// logging to `<dir>/<log_name>.log`, and waits as `ready` says: a standby never leads while
/// another replica holds the lease.
///
/// # Errors
/// [`Error`] when it cannot start or does not become ready.
pub async fn start_mic_as(
    m: &MicLaunch<'_>,
    instance: &str,
    log_name: &str,
    ready: MicReady,
) -> Result<Component, Error> {
    start_with_ports(async || start_mic_named(m, instance, log_name, ready).await).await
}

async fn start_mic_once(
    bin: &Path,
    dir: &Path,
    kubeconfig: &Path,
    cloudconfig: &Path,
    extra: &[String],
) -> Result<Component, Error> {
    let m = MicLaunch {
        bin,
        dir,
        kubeconfig,
        cloudconfig,
        extra,
    };
    start_mic_named(&m, "sandbox-mic", "mic", MicReady::Leading).await
}

async fn start_mic_named(
    m: &MicLaunch<'_>,
    instance: &str,
    log_name: &str,
    ready: MicReady,
) -> Result<Component, Error> {
    let MicLaunch {
        bin,
        dir,
        kubeconfig,
        cloudconfig,
        extra,
    } = *m;
    let lo = IpAddr::from([127, 0, 0, 1]);
    // MIC listens on every interface: ports free there.
    let ports = free_ports(IpAddr::from([0, 0, 0, 0]), 2).map_err(io("picking ports"))?;
    let (probe_port, metrics_port) = (ports[0], ports[1]);
    let mut args = vec![
        "mic".to_string(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--cloudconfig={}", cloudconfig.display()),
        format!("--http-probe-port={probe_port}"),
        format!("--prometheus-port={metrics_port}"),
        format!("--leader-election-instance={instance}"),
    ];
    args.extend(extra.iter().cloned());
    let mut child = spawn(bin, log_name, dir, &args).await?;
    let probe = SocketAddr::new(lo, probe_port);
    let log = dir.join(format!("{log_name}.log"));
    wait_probe(log_name, &mut child, probe, &log, ready).await?;
    Ok(Component {
        name: log_name.into(),
        pid: child.id().unwrap_or_default(),
        probe,
        metrics: SocketAddr::new(lo, metrics_port),
        log,
        child,
        last: Usage::default(),
    })
}

/// Whether `flags` set `name` (`--name`, `-name`, with or without `=value`).
fn gives(flags: &[String], name: &str) -> bool {
    flags.iter().any(|f| {
        let f = f.strip_prefix("--").or_else(|| f.strip_prefix('-'));
        f.is_some_and(|f| f == name || f.strip_prefix(name).is_some_and(|r| r.starts_with('=')))
    })
}

/// What an NMI process needs to know about its node.
pub struct NmiNode<'a> {
    /// The node's name.
    pub node: &'a str,
    /// The node's address: NMI's token endpoint listens there.
    pub ip: IpAddr,
    /// The node's metadata service (the Azure simulator's endpoint for this node).
    pub imds: SocketAddr,
    /// How long a token request waits for its assignment.
    pub assignment_wait: Duration,
    /// The token endpoint's port (0: one picked free).
    pub port: u16,
    /// More flags (the sandbox's `--nmi-arg`s), after the sandbox's own.
    pub flags: &'a [String],
}

/// Starts `bin nmi` for one node without iptables (a simulated pod's request reaches NMI
/// because it is sent from the pod's address), and waits until it is ready. Returns the
/// component and its token endpoint.
///
/// # Errors
/// [`Error`] when it cannot start or does not become ready.
pub async fn start_nmi(
    bin: &Path,
    dir: &Path,
    kubeconfig: &Path,
    n: &NmiNode<'_>,
) -> Result<(Component, SocketAddr), Error> {
    start_with_ports(async || start_nmi_once(bin, dir, kubeconfig, n).await).await
}

async fn start_nmi_once(
    bin: &Path,
    dir: &Path,
    kubeconfig: &Path,
    n: &NmiNode<'_>,
) -> Result<(Component, SocketAddr), Error> {
    let port = match n.port {
        0 => free_ports(n.ip, 1).map_err(io("picking a port"))?[0],
        p => p,
    };
    // Probe and metrics listen on every interface: ports free there.
    let ports = free_ports(IpAddr::from([0, 0, 0, 0]), 2).map_err(io("picking ports"))?;
    let (probe_port, metrics_port) = (ports[0], ports[1]);
    // The original's wait: attempts × interval (5 s each).
    let attempts = (n.assignment_wait.as_secs() / 5).max(1);
    let mut args = vec![
        "nmi".to_string(),
        format!("--node={}", n.node),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--nmi-listen-address={}", n.ip),
        format!("--nmi-port={port}"),
        format!("--metadata-ip={}", n.imds.ip()),
        format!("--metadata-port={}", n.imds.port()),
        format!("--http-probe-port={probe_port}"),
        format!("--prometheus-port={metrics_port}"),
    ];
    // The sandbox's choices where `flags` make none (a flag given twice is refused).
    for (flag, value) in [
        ("manage-iptables", "false".to_string()),
        ("retry-attempts-for-created", attempts.to_string()),
        ("find-identity-retry-interval", "5".to_string()),
        ("retry-attempts-for-assigned", "1".to_string()),
    ] {
        if !gives(n.flags, flag) {
            args.push(format!("--{flag}={value}"));
        }
    }
    args.extend(n.flags.iter().cloned());
    let name = format!("nmi-{}", n.node);
    let mut child = spawn(bin, &name, dir, &args).await?;
    let probe = SocketAddr::new(n.ip, probe_port);
    let log = dir.join(format!("{name}.log"));
    wait_active(&name, &mut child, probe, &log).await?;
    Ok((
        Component {
            name,
            pid: child.id().unwrap_or_default(),
            probe,
            metrics: SocketAddr::new(n.ip, metrics_port),
            log,
            child,
            last: Usage::default(),
        },
        SocketAddr::new(n.ip, port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_is_given_in_any_of_its_spellings_and_only_by_its_exact_name() {
        let flags = |f: &[&str]| f.iter().map(ToString::to_string).collect::<Vec<_>>();
        for given in [
            &["--manage-iptables=true"][..],
            &["-manage-iptables"],
            &["--manage-iptables", "true"],
        ] {
            assert!(gives(&flags(given), "manage-iptables"), "{given:?}");
        }
        assert!(!gives(
            &flags(&["--manage-iptables-x=1"]),
            "manage-iptables"
        ));
        assert!(!gives(&flags(&["manage-iptables"]), "manage-iptables"));
        assert!(!gives(&flags(&["--http-workers=1"]), "manage-iptables"));
    }

    #[test]
    fn this_process_has_a_resident_set_and_cpu_time() {
        let u = Usage::of(None);
        assert!(u.peak_rss_kb >= u.rss_kb && u.rss_kb > 0, "{u:?}");
        // A process that no longer exists reads as zeros rather than failing.
        assert_eq!(Usage::of(Some(u32::MAX)), Usage::default());
    }
}
