//! The node gate: the startup taint NMI lifts from its own node.
//!
//! Pods scheduled onto a node before NMI's iptables redirect exists talk to the real metadata
//! service and can get a token for any identity of the node's scale set (the original's issue
//! #573). Nodes of pools that use pod identity therefore join with a taint, by default
//! `aadpodidentity.k8s.io/nmi-not-ready=true:NoSchedule`, set in the node pool's configuration;
//! NMI tolerates it, and this module removes it from NMI's own node only once NMI's caches are
//! synced and the iptables rules are verified in place. If the rules later go missing and
//! cannot be restored, the taint is put back, so no further pod lands on an unguarded node.
//!
//! [`Phase`] and [`retaint`] are the decision as plain data; [`run`] watches the node and writes
//! its taints with a resourceVersion precondition (a concurrent change by someone else is never
//! overwritten; the next watch event brings it and the decision is made again).

use super::iptables::RulesState;
use crate::backoff::Backoff;
use crate::kube_watch::{self, Event};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams};
use prometheus::{IntCounterVec, IntGauge, Opts};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The taint key NMI owns unless `--node-gate-taint` names another.
pub const DEFAULT_TAINT_KEY: &str = "aadpodidentity.k8s.io/nmi-not-ready";

/// The effect of the taint NMI puts back (the node pool's own taint may carry any effect; NMI
/// removes every taint with its key).
pub const TAINT_EFFECT: &str = "NoSchedule";

/// Where the gate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not yet guarding: the node keeps whatever taint it joined with.
    Starting,
    /// Caches synced and rules verified once: the taint must be absent.
    Guarding,
    /// The rules are broken and could not be restored: the taint must be present.
    Exposed,
}

impl Phase {
    /// The phase after observing whether the caches are synced and what the rules are.
    ///
    /// Broken rules always expose the node; the taint goes (again) only when the caches are
    /// synced and the rules are verified. A cache resync after the gate opened does not close
    /// it: requests then fail safely, no traffic bypasses NMI.
    #[must_use]
    pub fn next(self, caches_synced: bool, rules: RulesState) -> Self {
        match rules {
            RulesState::Broken => Self::Exposed,
            r if caches_synced && r.guarded() => Self::Guarding,
            _ => self,
        }
    }

    /// Whether the taint must be on the node; `None` leaves the node as it is.
    #[must_use]
    pub fn taint_wanted(self) -> Option<bool> {
        match self {
            Self::Starting => None,
            Self::Guarding => Some(false),
            Self::Exposed => Some(true),
        }
    }
}

/// The node's new taint list when it must change: every taint with `key` removed (`want` false),
/// or `key=true:NoSchedule` added when no taint has that key (`want` true). `None`: no change.
#[must_use]
pub fn retaint(taints: &[Taint], key: &str, want: bool) -> Option<Vec<Taint>> {
    let has = taints.iter().any(|t| t.key == key);
    match (want, has) {
        (true, false) => {
            let mut out = taints.to_vec();
            out.push(Taint {
                key: key.to_string(),
                value: Some("true".into()),
                effect: TAINT_EFFECT.into(),
                time_added: None,
            });
            Some(out)
        }
        (false, true) => Some(taints.iter().filter(|t| t.key != key).cloned().collect()),
        _ => None,
    }
}

/// What the gate needs to know from the rest of NMI.
pub struct GateInputs {
    /// Whether NMI's caches hold a full list.
    pub caches_synced: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Woken whenever a cache finishes a (re)list.
    pub synced_changed: Arc<Notify>,
    /// The iptables reconciler's view of the rules.
    pub rules: watch::Receiver<RulesState>,
}

/// The gate's metrics (registered per node, as NMI's others).
#[derive(Clone, Debug)]
pub struct GateMetrics {
    /// `aadpodidentity_nmi_node_gate_tainted`: 1 while NMI's taint is on its node.
    pub tainted: IntGauge,
    /// `aadpodidentity_nmi_node_gate_writes_total{action,result}`: taint writes, `action`
    /// `lift` or `restore`, `result` `ok` or `error`.
    pub writes: IntCounterVec,
}

impl GateMetrics {
    /// Registers the gate's metrics for `node` in `shared`.
    ///
    /// # Errors
    /// When they are already registered for this node.
    pub fn new(shared: &crate::metrics::Metrics, node: &str) -> Result<Self, prometheus::Error> {
        let tainted = IntGauge::with_opts(
            Opts::new(
                "nmi_node_gate_tainted",
                "1 while NMI's startup taint is on its node (no new pod is scheduled there)",
            )
            .namespace(crate::metrics::NAMESPACE)
            .const_label("node", node),
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "nmi_node_gate_writes_total",
                "Writes of NMI's startup taint on its node, by action (lift, restore) and result",
            )
            .namespace(crate::metrics::NAMESPACE)
            .const_label("node", node),
            &["action", "result"],
        )?;
        shared.registry().register(Box::new(tainted.clone()))?;
        shared.registry().register(Box::new(writes.clone()))?;
        Ok(Self { tainted, writes })
    }
}

/// First retry delay after a failed write (doubling up to [`MAX_RETRY`]).
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Keeps NMI's taint on `node` as [`Phase`] wants it until `shutdown` fires. On shutdown the
/// taint is left as it is: NMI stopping (a rolling update, an uninstall) must not cordon nodes.
pub async fn run(
    client: kube::Client,
    node: String,
    taint_key: String,
    mut inputs: GateInputs,
    metrics: Option<GateMetrics>,
    shutdown: CancellationToken,
) {
    let api: Api<Node> = Api::all(client);
    let config = kube_watch::Config::default().fields(&format!("metadata.name={node}"));
    let mut nodes = kube_watch::watch(api.clone(), config).boxed();
    let mut current: Option<Node> = None;
    let mut phase = Phase::Starting;
    let mut retry: Option<Instant> = None;
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
    let mut rules_open = true;
    loop {
        // Armed before the check, so a sync finishing in between still wakes us.
        let synced_changed = inputs.synced_changed.notified();
        tokio::pin!(synced_changed);
        synced_changed.as_mut().enable();
        let synced = (inputs.caches_synced)();
        let rules = *inputs.rules.borrow_and_update();
        let next = phase.next(synced, rules);
        if next != phase {
            tracing::info!(%node, from = ?phase, to = ?next, caches_synced = synced, ?rules, "node gate");
            phase = next;
        }
        if let Some(n) = &current {
            let taints = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if let Some(m) = &metrics {
                m.tainted
                    .set(i64::from(taints.iter().any(|t| t.key == taint_key)));
            }
            let change = phase
                .taint_wanted()
                .and_then(|want| retaint(&taints, &taint_key, want).map(|t| (want, t)));
            if let Some((want, taints)) = change
                && retry.is_none_or(|at| Instant::now() >= at)
            {
                let action = if want { "restore" } else { "lift" };
                match write_taints(&api, n, &taints).await {
                    Ok(updated) => {
                        if want {
                            tracing::warn!(%node, taint = %taint_key, "iptables rules cannot be restored: startup taint put back, no new pod will be scheduled here");
                        } else {
                            tracing::info!(%node, taint = %taint_key, "caches synced and iptables rules verified: startup taint removed");
                        }
                        if let Some(m) = &metrics {
                            m.writes.with_label_values(&[action, "ok"]).inc();
                        }
                        current = Some(updated);
                        retry = None;
                        backoff.reset();
                        continue;
                    }
                    Err(e) => {
                        // A conflict means the watch brings a newer node; anything else is retried.
                        tracing::warn!(%node, error = %e, action, "cannot write the node's taints; retrying");
                        if let Some(m) = &metrics {
                            m.writes.with_label_values(&[action, "error"]).inc();
                        }
                        retry = Some(Instant::now() + backoff.next_delay());
                    }
                }
            }
        }
        let retry_at = retry;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = &mut synced_changed => {}
            r = inputs.rules.changed(), if rules_open => rules_open = r.is_ok(),
            () = async { if let Some(at) = retry_at { tokio::time::sleep_until(at).await } else { std::future::pending().await } } => {}
            ev = nodes.next() => match ev {
                Some(Event::Listed(list)) => current = list.into_iter().next(),
                Some(Event::Applied(n)) => current = Some(n),
                Some(Event::Deleted(_)) => current = None,
                Some(Event::Lost(e)) => tracing::warn!(%node, error = %e, "node watch failed; relisting"),
                None => return,
            },
        }
    }
}

/// Replaces the node's taints, on the condition that the node is still the version read.
async fn write_taints(api: &Api<Node>, node: &Node, taints: &[Taint]) -> Result<Node, kube::Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": if taints.is_empty() { serde_json::Value::Null } else { serde_json::to_value(taints).unwrap_or_default() }},
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some("true".into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    #[test]
    fn the_taint_goes_only_when_caches_are_synced_and_rules_are_guarded() {
        use RulesState::*;
        let p = Phase::Starting;
        assert_eq!(p.next(false, InPlace), Phase::Starting);
        assert_eq!(p.next(true, Unknown), Phase::Starting);
        assert_eq!(p.next(true, InPlace), Phase::Guarding);
        assert_eq!(p.next(true, NotManaged), Phase::Guarding);
        assert_eq!(Phase::Starting.taint_wanted(), None);
        assert_eq!(Phase::Guarding.taint_wanted(), Some(false));
    }

    #[test]
    fn broken_rules_put_the_taint_back_until_they_are_verified_again() {
        use RulesState::*;
        let p = Phase::Guarding.next(true, Broken);
        assert_eq!(p, Phase::Exposed);
        assert_eq!(p.taint_wanted(), Some(true));
        assert_eq!(
            p.next(false, InPlace),
            Phase::Exposed,
            "caches must be synced too"
        );
        assert_eq!(p.next(true, Unknown), Phase::Exposed);
        assert_eq!(p.next(true, InPlace), Phase::Guarding);
        assert_eq!(Phase::Starting.next(false, Broken), Phase::Exposed);
    }

    #[test]
    fn a_resync_after_the_gate_opened_keeps_it_open() {
        assert_eq!(
            Phase::Guarding.next(false, RulesState::InPlace),
            Phase::Guarding
        );
        assert_eq!(
            Phase::Guarding.next(true, RulesState::Unknown),
            Phase::Guarding
        );
    }

    #[test]
    fn retaint_removes_every_taint_with_the_key_and_keeps_the_others() {
        let k = DEFAULT_TAINT_KEY;
        let other = taint("dedicated", "NoSchedule");
        let taints = vec![other.clone(), taint(k, "NoSchedule"), taint(k, "NoExecute")];
        assert_eq!(retaint(&taints, k, false), Some(vec![other.clone()]));
        assert_eq!(retaint(&taints, k, true), None);
        assert_eq!(retaint(std::slice::from_ref(&other), k, false), None);
        let added = retaint(std::slice::from_ref(&other), k, true).unwrap();
        assert_eq!(added, vec![other, taint(k, TAINT_EFFECT)]);
    }
}
