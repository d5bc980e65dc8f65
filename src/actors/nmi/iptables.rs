//! The `aad-metadata` chain of the `nat` table: pods' TCP traffic to the metadata address is
//! DNATed to NMI; the chain is jumped to from PREROUTING only, so host-network traffic (which
//! goes through OUTPUT) still reaches the real metadata service.
//!
//! The rules have the original's shape: the jump is the first rule of PREROUTING (nothing
//! inserted before it can divert a pod's metadata traffic), and the chain holds exactly
//! `! -s 127.0.0.1/32 -d <metadata>/32 -p tcp --dport <port> -j DNAT --to-destination <nmi>`
//! followed by `-j RETURN`.
//!
//! The rules are installed at start, re-checked every `--ipt-update-interval-sec` (someone may
//! flush them; a failed repair is retried sooner, with backoff) and removed on shutdown, together
//! with the `route_localnet` setting NMI turned on. Whenever the rules go in, conntrack entries of
//! connections to the metadata address made before them can be deleted
//! (`--enable-conntrack-deletion`), so an open connection does not keep bypassing NMI. What the
//! reconciler knows is published as a [`RulesState`] for readiness and the node gate.
//!
//! The `iptables`, `sysctl` and `conntrack` binaries are invoked directly; commands can be
//! prefixed (e.g. `ip netns exec <ns>`) so the tests run inside namespaces they own.
//!
//! A node's rules live in one of iptables' two backends, legacy or nft, and rules written with
//! the other one are invisible to the kernel path kube-proxy set up. NMI runs in a container
//! whose image carries both, so with [`Backend::Auto`] it looks where the kubelet wrote its
//! canary chains (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY` in the mangle table), as
//! Kubernetes' own iptables-wrapper does, and uses that backend ([`choose_backend`]).

use std::net::IpAddr;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Name of the chain, as in the original.
pub const CHAIN: &str = "aad-metadata";

/// Source excluded from the redirect, as in the original: the node itself talking over loopback.
pub const EXCLUDED_SOURCE: &str = "127.0.0.1/32";

/// The sysctl NMI turns on when it redirects to a loopback address (and restores when it stops).
pub const ROUTE_LOCALNET: &str = "net.ipv4.conf.all.route_localnet";

/// Why an iptables operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command could not be started (iptables missing?).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Every command succeeded, but reading the rules back does not find them as installed.
    #[error("the {CHAIN} rules are not in place after installing them")]
    NotInPlace,
}

/// Which iptables NMI drives (`--iptables-backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The backend the kubelet uses, found from its canary chains; `iptables` as found on the
    /// PATH when only one backend is installed.
    #[default]
    Auto,
    /// `iptables` as found on the PATH, whatever backend it is.
    Path,
    /// `iptables-legacy`.
    Legacy,
    /// `iptables-nft`.
    Nft,
}

impl Backend {
    /// The command that manages rules with this backend (`Auto` must be resolved first).
    fn program(self) -> &'static str {
        match self {
            Self::Auto | Self::Path => "iptables",
            Self::Legacy => "iptables-legacy",
            Self::Nft => "iptables-nft",
        }
    }
}

/// The kubelet's chains in the mangle table (Kubernetes 1.17 and later create at least one).
fn has_kubelet_chains(save_output: &str) -> bool {
    save_output
        .lines()
        .any(|l| l.starts_with(":KUBE-IPTABLES-HINT") || l.starts_with(":KUBE-KUBELET-CANARY"))
}

/// The backend the node uses, from `iptables-nft-save -t mangle`, `ip6tables-nft-save -t mangle`,
/// `iptables-legacy-save` and `ip6tables-legacy-save` (empty when a command failed), in that order
/// of preference: the kubelet's chains in nft, then in legacy; nft when neither has them (a
/// node with no kubelet chains yet is a new one, and new distributions default to nft).
#[must_use]
pub fn choose_backend(nft4: &str, nft6: &str, legacy4: &str, legacy6: &str) -> Backend {
    if has_kubelet_chains(nft4) || has_kubelet_chains(nft6) {
        Backend::Nft
    } else if has_kubelet_chains(legacy4) || has_kubelet_chains(legacy6) {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// What to redirect where.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// The metadata address pods call (`--metadata-ip`).
    pub metadata_ip: IpAddr,
    /// The metadata port (`--metadata-port`).
    pub metadata_port: u16,
    /// Where NMI listens.
    pub target_ip: IpAddr,
    /// NMI's port.
    pub target_port: u16,
}

/// Installs, checks and removes the redirect.
#[derive(Clone, Debug)]
pub struct Iptables {
    redirect: Redirect,
    prefix: Vec<String>,
    /// The value `route_localnet` had before NMI changed it (restored by [`Iptables::remove`]).
    route_localnet_before: Arc<Mutex<Option<String>>>,
    backend: Backend,
    /// `backend` resolved (once) when it is [`Backend::Auto`].
    resolved: Arc<tokio::sync::OnceCell<Backend>>,
}

impl Iptables {
    /// Manages `redirect` with the host's iptables.
    #[must_use]
    pub fn new(redirect: Redirect) -> Self {
        Self {
            redirect,
            prefix: Vec::new(),
            route_localnet_before: Arc::new(Mutex::new(None)),
            backend: Backend::Auto,
            resolved: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// Drives `backend` (the default is [`Backend::Auto`]).
    #[must_use]
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The backend in use, detecting it on first use when it is [`Backend::Auto`].
    pub async fn backend(&self) -> Backend {
        if self.backend != Backend::Auto {
            return self.backend;
        }
        *self.resolved.get_or_init(|| self.detect_backend()).await
    }

    async fn detect_backend(&self) -> Backend {
        let save = |program: &'static str, args: &'static [&'static str]| async move {
            match self.run(program, args).await {
                Ok(out) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
                Err(_) => None,
            }
        };
        // Without both variants installed there is nothing to choose: use what the PATH has.
        let (Some(nft4), Some(legacy4)) = (
            save("iptables-nft-save", &["-t", "mangle"]).await,
            // Not `-t mangle`: asking legacy for a table creates it in the kernel.
            save("iptables-legacy-save", &[]).await,
        ) else {
            tracing::info!(
                "iptables-nft and iptables-legacy are not both installed; using iptables from the PATH"
            );
            return Backend::Path;
        };
        let nft6 = save("ip6tables-nft-save", &["-t", "mangle"])
            .await
            .unwrap_or_default();
        let legacy6 = save("ip6tables-legacy-save", &[]).await.unwrap_or_default();
        let chosen = choose_backend(&nft4, &nft6, &legacy4, &legacy6);
        tracing::info!(backend = ?chosen, "iptables backend chosen from the kubelet's chains");
        chosen
    }

    /// Runs every command behind `prefix` (e.g. `["ip", "netns", "exec", "ns1"]`).
    #[must_use]
    pub fn with_prefix(mut self, prefix: Vec<String>) -> Self {
        self.prefix = prefix;
        self
    }

    async fn run(&self, program: &str, args: &[&str]) -> Result<Output, Error> {
        let (prog, rest): (&str, Vec<&str>) = match self.prefix.split_first() {
            Some((p, more)) => (
                p.as_str(),
                more.iter()
                    .map(String::as_str)
                    .chain(std::iter::once(program))
                    .chain(args.iter().copied())
                    .collect(),
            ),
            None => (program, args.to_vec()),
        };
        Command::new(prog)
            .args(&rest)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| Error::Spawn {
                command: format!("{prog} {}", rest.join(" ")),
                source,
            })
    }

    async fn ok(&self, args: &[&str]) -> Result<bool, Error> {
        let program = self.backend().await.program();
        Ok(self.run(program, args).await?.status.success())
    }

    async fn must(&self, args: &[&str]) -> Result<(), Error> {
        let program = self.backend().await.program();
        self.must_run(program, args).await.map(drop)
    }

    async fn must_run(&self, program: &str, args: &[&str]) -> Result<Output, Error> {
        let out = self.run(program, args).await?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(Error::Failed {
                command: format!("{program} {}", args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// The DNAT rule of the chain (without `-t nat -A <chain>`).
    fn dnat_rule(&self) -> Vec<String> {
        let r = &self.redirect;
        [
            "-p",
            "tcp",
            "!",
            "-s",
            EXCLUDED_SOURCE,
            "-d",
            &r.metadata_ip.to_string(),
            "--dport",
            &r.metadata_port.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &std::net::SocketAddr::new(r.target_ip, r.target_port).to_string(),
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }

    /// `iptables -t nat -S <chain>`: the chain's rules as `-A ...` lines (none when absent).
    async fn rules_of(&self, chain: &str) -> Result<Option<Vec<String>>, Error> {
        let program = self.backend().await.program();
        let out = self.run(program, &["-t", "nat", "-S", chain]).await?;
        if !out.status.success() {
            // Absent chain (exit 1), or iptables cannot read the table: tell them apart.
            if self.ok(&["-t", "nat", "-S", "PREROUTING"]).await? {
                return Ok(None);
            }
            return Err(Error::Failed {
                command: format!("{program} -t nat -S {chain}"),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("-A "))
                .map(str::to_string)
                .collect(),
        ))
    }

    /// Whether the chain holds exactly the DNAT rule followed by RETURN.
    async fn chain_correct(&self) -> Result<bool, Error> {
        let Some(rules) = self.rules_of(CHAIN).await? else {
            return Ok(false);
        };
        if rules.len() != 2 || rules[1] != format!("-A {CHAIN} -j RETURN") {
            return Ok(false);
        }
        let dnat = self.dnat_rule();
        let mut check = vec!["-t", "nat", "-C", CHAIN];
        check.extend(dnat.iter().map(String::as_str));
        self.ok(&check).await
    }

    /// Whether the first rule of PREROUTING is the jump to the chain (and the only jump to it).
    async fn jump_first(&self) -> Result<bool, Error> {
        let rules = self.rules_of("PREROUTING").await?.unwrap_or_default();
        let jump = format!("-A PREROUTING -j {CHAIN}");
        Ok(rules.first() == Some(&jump) && rules.iter().filter(|r| **r == jump).count() == 1)
    }

    /// Makes the rules what they should be. Returns true when something had to change.
    ///
    /// # Errors
    /// [`Error`] when iptables cannot be run or refuses a change.
    pub async fn ensure(&self) -> Result<bool, Error> {
        let mut changed = false;
        if !self.chain_correct().await? {
            if self.rules_of(CHAIN).await?.is_none() {
                self.must(&["-t", "nat", "-N", CHAIN]).await?;
            } else {
                self.must(&["-t", "nat", "-F", CHAIN]).await?;
            }
            let dnat = self.dnat_rule();
            let mut add = vec!["-t", "nat", "-A", CHAIN];
            add.extend(dnat.iter().map(String::as_str));
            self.must(&add).await?;
            self.must(&["-t", "nat", "-A", CHAIN, "-j", "RETURN"])
                .await?;
            changed = true;
        }
        if !self.jump_first().await? {
            // Absent, duplicated, or something was inserted above it: one jump, first.
            while self
                .ok(&["-t", "nat", "-D", "PREROUTING", "-j", CHAIN])
                .await?
            {}
            self.must(&["-t", "nat", "-I", "PREROUTING", "1", "-j", CHAIN])
                .await?;
            changed = true;
        }
        if self.redirect.target_ip.is_loopback() {
            self.enable_route_localnet().await;
        }
        Ok(changed)
    }

    /// DNAT to a loopback address from PREROUTING needs `route_localnet`; the value found is
    /// remembered so [`Iptables::remove`] can put it back.
    async fn enable_route_localnet(&self) {
        let current = match self.must_run("sysctl", &["-n", ROUTE_LOCALNET]).await {
            Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read {ROUTE_LOCALNET}; DNAT to a loopback NMI address may not work");
                return;
            }
        };
        if current == "1" {
            return;
        }
        let set = format!("{ROUTE_LOCALNET}=1");
        match self.must_run("sysctl", &["-q", "-w", &set]).await {
            Ok(_) => {
                let mut before = self
                    .route_localnet_before
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Keep the first value seen: a later pass may find our own 1 after a repair.
                before.get_or_insert(current);
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot enable {ROUTE_LOCALNET}; DNAT to a loopback NMI address may not work"
            ),
        }
    }

    /// True when the chain holds exactly its rules and the jump to it is the first rule of
    /// PREROUTING.
    ///
    /// # Errors
    /// [`Error`] when iptables cannot be run.
    pub async fn in_place(&self) -> Result<bool, Error> {
        Ok(self.chain_correct().await? && self.jump_first().await?)
    }

    /// Removes the jump and the chain, and puts `route_localnet` back as NMI found it. Safe to
    /// call when they are absent.
    ///
    /// # Errors
    /// [`Error`] when iptables cannot be run or refuses to delete the chain.
    pub async fn remove(&self) -> Result<(), Error> {
        while self
            .ok(&["-t", "nat", "-D", "PREROUTING", "-j", CHAIN])
            .await?
        {}
        if self.ok(&["-t", "nat", "-n", "-L", CHAIN]).await? {
            self.must(&["-t", "nat", "-F", CHAIN]).await?;
            self.must(&["-t", "nat", "-X", CHAIN]).await?;
        }
        let before = self
            .route_localnet_before
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(value) = before {
            let set = format!("{ROUTE_LOCALNET}={value}");
            self.must_run("sysctl", &["-q", "-w", &set]).await?;
        }
        Ok(())
    }

    /// Deletes conntrack entries of TCP connections to the metadata address, so connections
    /// made before the redirect existed do not keep reaching the metadata service
    /// (`--enable-conntrack-deletion`). "No entries" is not an error.
    ///
    /// # Errors
    /// [`Error`] when conntrack cannot be run or fails.
    pub async fn delete_conntrack_entries(&self) -> Result<(), Error> {
        let ip = self.redirect.metadata_ip.to_string();
        let port = self.redirect.metadata_port.to_string();
        let args = ["-D", "-p", "tcp", "--orig-dst", &ip, "--dport", &port];
        let out = self.run("conntrack", &args).await?;
        // conntrack exits 1 when nothing matched ("0 flow entries have been deleted").
        if out.status.success() || out.status.code() == Some(1) {
            Ok(())
        } else {
            Err(Error::Failed {
                command: format!("conntrack {}", args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// What the reconciler knows about the rules (for readiness and the node gate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RulesState {
    /// Not checked yet.
    Unknown,
    /// Verified in place after the last pass (and, when asked, conntrack entries older than the
    /// rules deleted).
    InPlace,
    /// Missing or wrong, and the last attempt to put them in place failed.
    Broken,
    /// NMI does not manage the redirect (`--manage-iptables=false`, the sandbox): someone else
    /// delivers pods' metadata traffic, so there is nothing to wait for.
    NotManaged,
}

impl RulesState {
    /// Whether pods' metadata traffic is known to reach NMI.
    #[must_use]
    pub fn guarded(self) -> bool {
        matches!(self, Self::InPlace | Self::NotManaged)
    }
}

/// How the reconciler runs.
#[derive(Clone, Debug)]
pub struct ReconcileSettings {
    /// `--ipt-update-interval-sec`: the check interval while the rules are fine.
    pub interval: Duration,
    /// `--enable-conntrack-deletion`.
    pub delete_conntrack: bool,
}

/// First retry delay after a failed pass (doubling up to the interval).
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Installs the rules, re-checks them every interval (sooner, with backoff, after a failure),
/// and removes them when `shutdown` fires. `ready` is true and `state` says
/// [`RulesState::InPlace`] while the rules are verified in place.
///
/// # Errors
/// [`Error`] when the rules cannot be removed at shutdown.
pub async fn reconcile(
    ipt: Iptables,
    settings: ReconcileSettings,
    ready: Arc<AtomicBool>,
    state: watch::Sender<RulesState>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut first = true;
    let mut retry = FIRST_RETRY;
    loop {
        let wait = match pass(&ipt, &settings, first).await {
            Ok(()) => {
                first = false;
                retry = FIRST_RETRY;
                ready.store(true, Ordering::Release);
                state.send_replace(RulesState::InPlace);
                settings.interval
            }
            Err(e) => {
                ready.store(false, Ordering::Release);
                state.send_replace(RulesState::Broken);
                tracing::error!(error = %e, chain = CHAIN, "cannot put the iptables rules in place; pods on this node may reach the metadata service directly");
                let wait = retry.min(settings.interval);
                retry = (retry * 2).min(settings.interval);
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    ready.store(false, Ordering::Release);
    state.send_replace(RulesState::Unknown);
    ipt.remove().await
}

/// One pass: repair what is wrong, flush conntrack when the rules went in, verify.
async fn pass(ipt: &Iptables, settings: &ReconcileSettings, first: bool) -> Result<(), Error> {
    let changed = ipt.ensure().await?;
    if changed && !first {
        tracing::warn!(
            chain = CHAIN,
            "iptables rules were missing or wrong; restored"
        );
    }
    if changed && settings.delete_conntrack {
        // Only now: a connection opened before the redirect keeps its old destination until
        // its conntrack entry goes.
        ipt.delete_conntrack_entries().await?;
    }
    // Verified by reading them back, not by trusting the commands' exit codes.
    if ipt.in_place().await? {
        Ok(())
    } else {
        Err(Error::NotInPlace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFT_MANGLE_WITH_KUBELET: &str = "# Generated by iptables-nft-save v1.8.9\n*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
    const LEGACY_WITH_KUBELET: &str = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n";
    const EMPTY_MANGLE: &str = "*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn the_backend_is_the_one_holding_the_kubelets_chains() {
        assert_eq!(
            choose_backend(NFT_MANGLE_WITH_KUBELET, "", LEGACY_WITH_KUBELET, ""),
            Backend::Nft,
            "nft is checked first, as Kubernetes' wrapper does"
        );
        assert_eq!(
            choose_backend(EMPTY_MANGLE, "", LEGACY_WITH_KUBELET, ""),
            Backend::Legacy
        );
        assert_eq!(
            choose_backend("", "", "", LEGACY_WITH_KUBELET),
            Backend::Legacy,
            "IPv6-only kubelet chains count too"
        );
        assert_eq!(
            choose_backend("", NFT_MANGLE_WITH_KUBELET, "", ""),
            Backend::Nft
        );
    }

    #[test]
    fn a_node_without_kubelet_chains_gets_nft() {
        assert_eq!(
            choose_backend(EMPTY_MANGLE, "", EMPTY_MANGLE, ""),
            Backend::Nft
        );
        assert_eq!(choose_backend("", "", "", ""), Backend::Nft);
    }

    #[test]
    fn a_chain_name_in_a_rule_is_not_a_kubelet_chain() {
        // Only a chain declaration counts, not a comment or a jump naming it.
        let rules = "*mangle\n-A PREROUTING -m comment --comment \":KUBE-KUBELET-CANARY\" -j ACCEPT\nCOMMIT\n";
        assert_eq!(choose_backend("", "", rules, ""), Backend::Nft);
    }
}
