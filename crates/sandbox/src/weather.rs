//! The weather of a running sandbox: faults injected into the simulated Azure and Kubernetes
//! API on a schedule, as `--faults` chooses. Each injection is logged (`fault injected`, with
//! its `kind`), so a run's log says what hit the system and when.
//!
//! Fault profiles that only configure the simulators (`throttling`, `slow-arm`) need no
//! schedule; they are set when the simulators start.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use aad_pod_identity_sim::azure::{AzureSimHandle, FaultKind, FaultTarget};
use aad_pod_identity_sim::kube::{KubeFaultHandle, Refusal, WriteRefusal};

use crate::args::FaultProfile;

/// One fault, as the schedule injects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strike {
    /// One ARM PATCH fails with 503.
    Arm503,
    /// One ARM PATCH is applied but its answer is lost (the connection closes unanswered).
    PatchAnswerLost,
    /// Six ARM answers in a row are 500, 502, 503 or 504.
    ArmErrorBurst,
    /// The next ten ARM requests are answered 429 with `Retry-After: 3`.
    ThrottleStorm,
    /// One ARM PATCH never answers (the caller's timeout ends it).
    ArmHang,
    /// Every Kubernetes watch is cut; clients resume from their resourceVersion.
    WatchDrop,
    /// The watch history is compacted and every watch cut: resumes get 410 `Expired`.
    WatchExpiry,
    /// The API server restarts: every connection cut, new ones refused for three seconds.
    ApiRestart,
    /// The next three writes of AzureAssignedIdentities are refused with 409, 422 and 500.
    WriteRefusals,
    /// Kubernetes writes take one second more, for ten seconds.
    SlowWrites,
}

impl Strike {
    /// The label the log uses.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Arm503 => "arm_503",
            Self::PatchAnswerLost => "patch_answer_lost",
            Self::ArmErrorBurst => "arm_5xx_burst",
            Self::ThrottleStorm => "arm_429_storm",
            Self::ArmHang => "arm_hang",
            Self::WatchDrop => "watch_drop",
            Self::WatchExpiry => "watch_410",
            Self::ApiRestart => "api_restart",
            Self::WriteRefusals => "write_refusals",
            Self::SlowWrites => "slow_writes",
        }
    }
}

/// Every scheduled strike, in the order `chaos` cycles through them.
pub const CHAOS: [Strike; 9] = [
    Strike::PatchAnswerLost,
    Strike::WatchDrop,
    Strike::ArmErrorBurst,
    Strike::WatchExpiry,
    Strike::ThrottleStorm,
    Strike::WriteRefusals,
    Strike::ArmHang,
    Strike::SlowWrites,
    Strike::ApiRestart,
];

/// What a profile strikes and how often, or `None` for profiles without a schedule.
#[must_use]
pub fn schedule(profile: FaultProfile) -> Option<(Duration, Vec<Strike>)> {
    let s = Duration::from_secs;
    Some(match profile {
        FaultProfile::None | FaultProfile::Throttling | FaultProfile::SlowArm => return None,
        FaultProfile::Flaky => (s(5), vec![Strike::Arm503]),
        FaultProfile::PatchAnswerLost => (s(10), vec![Strike::PatchAnswerLost]),
        FaultProfile::ArmErrorBursts => (s(20), vec![Strike::ArmErrorBurst]),
        FaultProfile::ThrottleStorm => (s(30), vec![Strike::ThrottleStorm]),
        FaultProfile::ArmHangs => (s(30), vec![Strike::ArmHang]),
        FaultProfile::WatchDrops => (s(15), vec![Strike::WatchDrop]),
        FaultProfile::WatchExpiry => (s(30), vec![Strike::WatchExpiry]),
        FaultProfile::ApiRestart => (s(60), vec![Strike::ApiRestart]),
        FaultProfile::SlowWrites => (s(20), vec![Strike::SlowWrites]),
        FaultProfile::KubeWriteErrors => (s(20), vec![Strike::WriteRefusals]),
        FaultProfile::Chaos => (s(10), CHAOS.to_vec()),
    })
}

/// ARM requests a [`Strike::ThrottleStorm`] answers 429 (`Retry-After: 3` each).
pub const STORM_REQUESTS: u32 = 10;

/// Injects `strike` now; returns once it is injected (an API restart: once the server serves
/// again; slow writes: once they are fast again).
pub async fn strike(strike: Strike, azure: &AzureSimHandle, kube: &KubeFaultHandle) {
    strike_sized(strike, STORM_REQUESTS, azure, kube).await;
}

/// As [`strike`], with a throttle storm of `storm_requests` 429s instead of
/// [`STORM_REQUESTS`] (a client that waits out each `Retry-After` is held that many times 3 s).
pub async fn strike_sized(
    strike: Strike,
    storm_requests: u32,
    azure: &AzureSimHandle,
    kube: &KubeFaultHandle,
) {
    info!(kind = strike.label(), "fault injected");
    match strike {
        Strike::Arm503 => azure.inject(FaultTarget::ArmPatch, 1, FaultKind::Status(503)),
        Strike::PatchAnswerLost => azure.inject(FaultTarget::ArmPatch, 1, FaultKind::AnswerLost),
        Strike::ArmErrorBurst => {
            for code in [500, 502, 503, 504, 503, 500] {
                azure.inject(FaultTarget::AnyArm, 1, FaultKind::Status(code));
            }
        }
        Strike::ThrottleStorm => azure.inject(
            FaultTarget::AnyArm,
            storm_requests,
            FaultKind::Throttle {
                retry_after_secs: 3,
                as_http_date: false,
            },
        ),
        Strike::ArmHang => azure.inject(FaultTarget::ArmPatch, 1, FaultKind::Hang),
        Strike::WatchDrop => kube.faults().drop_watches(),
        Strike::WatchExpiry => {
            kube.compact_history();
            kube.faults().drop_watches();
        }
        Strike::ApiRestart => {
            if let Err(e) = kube.restart(Duration::from_secs(3)).await {
                warn!(error = %e, "the Kubernetes simulator did not come back");
            }
        }
        Strike::WriteRefusals => {
            for refusal in [Refusal::Conflict, Refusal::Invalid, Refusal::Internal] {
                kube.faults().refuse_writes(WriteRefusal {
                    plural: "azureassignedidentities".into(),
                    namespace: None,
                    name_prefix: String::new(),
                    refusal,
                    remaining: Some(1),
                });
            }
        }
        Strike::SlowWrites => {
            kube.faults().set_write_latency(Duration::from_secs(1));
            tokio::time::sleep(Duration::from_secs(10)).await;
            kube.faults().set_write_latency(Duration::ZERO);
        }
    }
}

/// Starts the schedule of `profile`, if it has one: the first strike one period after start.
#[must_use]
pub fn spawn(
    profile: FaultProfile,
    azure: Arc<AzureSimHandle>,
    kube: KubeFaultHandle,
) -> Option<tokio::task::JoinHandle<()>> {
    let (period, strikes) = schedule(profile)?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for s in strikes.iter().cycle() {
            tick.tick().await;
            strike(*s, &azure, &kube).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn every_scheduled_profile_strikes_and_chaos_strikes_every_kind_but_the_lone_503() {
        for p in FaultProfile::value_variants() {
            let has = schedule(*p).is_some();
            let configured_only = matches!(
                p,
                FaultProfile::None | FaultProfile::Throttling | FaultProfile::SlowArm
            );
            assert_eq!(has, !configured_only, "{p:?}");
        }
        let (_, chaos) = schedule(FaultProfile::Chaos).unwrap();
        let mut kinds: Vec<_> = chaos.iter().map(|s| s.label()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), 9);
        assert!(!chaos.contains(&Strike::Arm503));
    }
}
