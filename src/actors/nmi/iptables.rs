//! The `aad-metadata` chain of the `nat` table: pods' TCP traffic to the metadata address is
//! DNATed to NMI; the chain is jumped to from PREROUTING only, so host-network traffic (which
//! goes through OUTPUT) still reaches the real metadata service.
//!
//! The rules are installed at start, re-checked every `--ipt-update-interval-sec` (someone may
//! flush them) and removed on shutdown. The `iptables` binary is invoked directly; commands can
//! be prefixed (e.g. `ip netns exec <ns>`) so the tests run inside namespaces they own.

use std::net::IpAddr;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Name of the chain, as in the original.
pub const CHAIN: &str = "aad-metadata";

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
}

impl Iptables {
    /// Manages `redirect` with the host's iptables.
    #[must_use]
    pub fn new(redirect: Redirect) -> Self {
        Self {
            redirect,
            prefix: Vec::new(),
        }
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
        Ok(self.run("iptables", args).await?.status.success())
    }

    async fn must(&self, args: &[&str]) -> Result<(), Error> {
        let out = self.run("iptables", args).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Failed {
                command: format!("iptables {}", args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    fn rule(&self) -> Vec<String> {
        let r = &self.redirect;
        [
            "-p",
            "tcp",
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

    /// Makes the rules what they should be. Returns true when something had to change.
    ///
    /// # Errors
    /// [`Error`] when iptables cannot be run or refuses a change.
    pub async fn ensure(&self) -> Result<bool, Error> {
        let mut changed = false;
        if !self.ok(&["-t", "nat", "-n", "-L", CHAIN]).await? {
            self.must(&["-t", "nat", "-N", CHAIN]).await?;
            changed = true;
        }
        let rule = self.rule();
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        let mut check = vec!["-t", "nat", "-C", CHAIN];
        check.extend(&rule);
        let present = self.ok(&check).await?;
        if !present || self.chain_rule_count().await? != 1 {
            self.must(&["-t", "nat", "-F", CHAIN]).await?;
            let mut add = vec!["-t", "nat", "-A", CHAIN];
            add.extend(&rule);
            self.must(&add).await?;
            changed = true;
        }
        if !self
            .ok(&["-t", "nat", "-C", "PREROUTING", "-j", CHAIN])
            .await?
        {
            self.must(&["-t", "nat", "-A", "PREROUTING", "-j", CHAIN])
                .await?;
            changed = true;
        }
        if self.redirect.target_ip.is_loopback() {
            // DNAT to a loopback address from PREROUTING needs route_localnet.
            let out = self
                .run(
                    "sysctl",
                    &["-q", "-w", "net.ipv4.conf.all.route_localnet=1"],
                )
                .await?;
            if !out.status.success() {
                tracing::warn!(
                    stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                    "cannot enable route_localnet; DNAT to a loopback NMI address may not work"
                );
            }
        }
        Ok(changed)
    }

    async fn chain_rule_count(&self) -> Result<usize, Error> {
        let out = self.run("iptables", &["-t", "nat", "-S", CHAIN]).await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count())
    }

    /// True when the chain, its rule and the jump from PREROUTING are all in place.
    ///
    /// # Errors
    /// [`Error`] when iptables cannot be run.
    pub async fn in_place(&self) -> Result<bool, Error> {
        let rule = self.rule();
        let mut check = vec!["-t", "nat", "-C", CHAIN];
        check.extend(rule.iter().map(String::as_str));
        Ok(self.ok(&check).await?
            && self
                .ok(&["-t", "nat", "-C", "PREROUTING", "-j", CHAIN])
                .await?)
    }

    /// Removes the jump and the chain. Safe to call when they are absent.
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
        Ok(())
    }

    /// Deletes conntrack entries of connections to the metadata address made before the
    /// redirect existed (`--enable-conntrack-deletion`). "No entries" is not an error.
    ///
    /// # Errors
    /// [`Error`] when conntrack cannot be run.
    pub async fn delete_conntrack_entries(&self) -> Result<(), Error> {
        let ip = self.redirect.metadata_ip.to_string();
        let port = self.redirect.metadata_port.to_string();
        let out = self
            .run(
                "conntrack",
                &["-D", "-d", &ip, "-p", "tcp", "--dport", &port],
            )
            .await?;
        // conntrack exits 1 when nothing matched.
        if out.status.success() || out.status.code() == Some(1) {
            Ok(())
        } else {
            Err(Error::Failed {
                command: format!("conntrack -D -d {ip} -p tcp --dport {port}"),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// Installs the rules, re-checks them every `interval`, and removes them when `shutdown` fires.
/// `ready` is true while the rules are known to be in place.
pub async fn reconcile(
    ipt: Iptables,
    interval: Duration,
    delete_conntrack: bool,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                match ipt.ensure().await {
                    Ok(changed) => {
                        if changed && !first {
                            tracing::warn!(chain = CHAIN, "iptables rules were missing or wrong; restored");
                        }
                        if first && delete_conntrack
                            && let Err(e) = ipt.delete_conntrack_entries().await
                        {
                            tracing::warn!(error = %e, "cannot delete conntrack entries");
                        }
                        first = false;
                        ready.store(true, Ordering::Release);
                    }
                    Err(e) => {
                        ready.store(false, Ordering::Release);
                        tracing::error!(error = %e, "cannot install iptables rules");
                    }
                }
            }
        }
    }
    ready.store(false, Ordering::Release);
    ipt.remove().await
}
