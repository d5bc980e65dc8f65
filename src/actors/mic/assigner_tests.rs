//! The assigner actors driven by the real matcher against a fake ARM, under a paused clock.

use super::*;
use crate::actors::mic::fixtures::*;
use crate::actors::mic::matcher::{BindingIndex, MatchSettings};
use crate::object_key::ObjectKey;
use std::sync::Mutex;
use std::time::Duration;
use tokio::task::LocalSet;

/// Collects every report with the time it arrived.
struct Collector(Arc<Mutex<Vec<(Instant, HostReport)>>>);
impl Actor for Collector {
    type Context = Context<Self>;
}
impl Handler<HostReport> for Collector {
    type Result = ();
    fn handle(&mut self, msg: HostReport, _: &mut Context<Self>) {
        self.0.lock().unwrap().push((Instant::now(), msg));
    }
}

/// A matcher plus one assigner per host, the way the coordinator wires them.
struct Rig {
    index: BindingIndex,
    arm: Arc<FakeArm>,
    assigners: BTreeMap<HostId, Addr<Assigner>>,
    reports: Arc<Mutex<Vec<(Instant, HostReport)>>>,
    collector: Recipient<HostReport>,
    budget: Arc<WriteBudget>,
    settings: BatchSettings,
    seq: u64,
}

impl Rig {
    fn new(latency: Duration, settings: BatchSettings) -> Self {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let collector = Collector(reports.clone()).start().recipient();
        Self {
            index: BindingIndex::new(MatchSettings::default()),
            arm: FakeArm::new(latency),
            assigners: BTreeMap::new(),
            reports,
            collector,
            budget: WriteBudget::new(0),
            settings,
            seq: 0,
        }
    }

    /// Sends every host its desired identities, as the coordinator does after each change.
    fn sync(&mut self) {
        let d = self.index.desired();
        self.seq += 1;
        for (host, ids) in d.hosts {
            let addr = self.assigners.entry(host.clone()).or_insert_with(|| {
                Assigner::new(
                    host.clone(),
                    self.settings.clone(),
                    self.arm.clone(),
                    self.budget.clone(),
                    self.collector.clone(),
                    MicMetrics::unregistered().unwrap(),
                )
                .start()
            });
            // Every identity recorded at once, as the writer's first write records it.
            addr.do_send(SetRecorded { ids: ids.clone() });
            addr.do_send(SetDesired {
                desired: ids,
                immutable: d.immutable.clone(),
                seq: self.seq,
            });
        }
    }

    /// When every host last reported all of `want` assigned.
    fn assigned_at(&self, host: &HostId, want: &BTreeSet<IdentityId>) -> Option<Instant> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .find(|(_, r)| &r.host == host && want.is_subset(&r.assigned))
            .map(|(t, _)| *t)
    }

    fn last_report(&self, host: &HostId) -> Option<HostReport> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, r)| &r.host == host)
            .map(|(_, r)| r.clone())
    }
}

fn ss(name: &str) -> HostId {
    HostId::scale_set(SUB, RG, name)
}

async fn settle() {
    // Lets every actor run; the paused clock only advances when all are idle.
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn two_hundred_pods_with_twenty_identities_on_two_scale_sets_need_at_most_six_patches() {
    LocalSet::new()
        .run_until(async {
            let latency = Duration::from_secs(2);
            let mut rig = Rig::new(latency, BatchSettings::default());
            for s in ["ss0", "ss1"] {
                for i in 0..10 {
                    rig.index.apply_node(&vmss_node(s, i));
                }
            }
            for i in 0..20 {
                rig.index.apply_identity(&identity(&format!("id{i}")).build());
                rig.index.apply_binding(
                    &binding(&format!("b{i}"), &format!("id{i}"), &format!("sel{i}")).build(),
                );
            }
            rig.sync();
            let t0 = Instant::now();
            // 200 pods created over one second; the matcher runs after every one.
            for p in 0..200u32 {
                let node = format!("ss{}-{}", p % 2, (p / 2) % 10);
                rig.index.apply_pod(
                    &pod(&format!("p{p}"))
                        .label(&format!("sel{}", p % 20))
                        .on_node(&node)
                        .build(),
                );
                rig.sync();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let last_pod = Instant::now();
            tokio::time::sleep(Duration::from_secs(30)).await;
            let d = rig.index.desired();
            let mut done = t0;
            for s in ["ss0", "ss1"] {
                let want = &d.hosts[&ss(s)];
                assert_eq!(want.len(), 10);
                assert_eq!(&rig.arm.on_host(&ss(s)), want);
                done = done.max(rig.assigned_at(&ss(s), want).expect("all assigned"));
            }
            let patches = rig.arm.patch_count();
            println!(
                "200 pods/20 identities/2 scale sets, ARM latency 2s: {patches} PATCHes, all assigned {:?} after the first pod ({:?} after the last)",
                done - t0,
                done - last_pod
            );
            assert!(patches <= 6, "{patches} PATCHes");
            // One PATCH in flight per host: consecutive PATCHes of a host are a latency apart.
            let calls = rig.arm.patches.lock().unwrap().clone();
            for s in ["ss0", "ss1"] {
                let at: Vec<_> = calls.iter().filter(|c| c.host == ss(s)).map(|c| c.at).collect();
                assert!(at.windows(2).all(|w| w[1] - w[0] >= latency), "{at:?}");
            }
            assert!(done - t0 <= 3 * latency, "{:?}", done - t0);
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn pods_trickling_in_for_ten_seconds_cost_one_patch_per_arm_latency_per_scale_set() {
    LocalSet::new()
        .run_until(async {
            let latency = Duration::from_secs(2);
            let mut rig = Rig::new(latency, BatchSettings::default());
            for s in ["ss0", "ss1"] {
                for i in 0..10 {
                    rig.index.apply_node(&vmss_node(s, i));
                }
            }
            for i in 0..20 {
                rig.index
                    .apply_identity(&identity(&format!("id{i}")).build());
                rig.index.apply_binding(
                    &binding(&format!("b{i}"), &format!("id{i}"), &format!("sel{i}")).build(),
                );
            }
            rig.sync();
            // Hosts already read (as after start-up), then 200 pods over ten seconds.
            tokio::time::sleep(Duration::from_secs(5)).await;
            for p in 0..200u32 {
                let node = format!("ss{}-{}", p % 2, (p / 2) % 10);
                rig.index.apply_pod(
                    &pod(&format!("p{p}"))
                        .label(&format!("sel{}", (p / 10) % 20))
                        .on_node(&node)
                        .build(),
                );
                rig.sync();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
            let patches = rig.arm.patch_count();
            println!("200 pods over 10 s, ARM latency 2s: {patches} PATCHes");
            // 10 s of arrivals / 2 s per PATCH = 5 rounds (+1 for the tail) on each of 2 hosts.
            assert!(patches <= 12, "{patches} PATCHes");
            for s in ["ss0", "ss1"] {
                assert_eq!(rig.arm.on_host(&ss(s)).len(), 20);
            }
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_cronjob_every_minute_for_ten_runs_costs_two_patches_with_the_grace_period() {
    LocalSet::new()
        .run_until(async {
            let mut rig = Rig::new(Duration::from_secs(2), BatchSettings::default());
            rig.index.apply_node(&vmss_node("ss0", 0));
            rig.index.apply_identity(&identity("id1").build());
            rig.index
                .apply_binding(&binding("b1", "id1", "cron").build());
            rig.sync();
            for run in 0..10 {
                let name = format!("cron-{run}");
                rig.index
                    .apply_pod(&pod(&name).label("cron").on_node("ss0-0").build());
                rig.sync();
                tokio::time::sleep(Duration::from_secs(20)).await;
                rig.index.apply_pod(
                    &pod(&name)
                        .label("cron")
                        .on_node("ss0-0")
                        .phase("Succeeded")
                        .build(),
                );
                rig.sync();
                tokio::time::sleep(Duration::from_secs(20)).await;
                rig.index.delete_pod(&ObjectKey::new("default", &name));
                rig.sync();
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
            tokio::time::sleep(Duration::from_secs(120)).await;
            let patches = rig.arm.patches.lock().unwrap().clone();
            println!(
                "CronJob x10 with a 60s grace period: {} PATCHes",
                patches.len()
            );
            assert_eq!(patches.len(), 2, "{patches:?}");
            assert_eq!(patches[0].add.len(), 1);
            assert_eq!(patches[1].remove.len(), 1);
            assert!(
                rig.arm.on_host(&ss("ss0")).is_empty(),
                "released at the end"
            );
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_cronjob_without_a_grace_period_costs_two_patches_per_run() {
    LocalSet::new()
        .run_until(async {
            let settings = BatchSettings {
                unassign_grace: Duration::ZERO,
                ..BatchSettings::default()
            };
            let mut rig = Rig::new(Duration::from_secs(2), settings);
            rig.index.apply_node(&vmss_node("ss0", 0));
            rig.index.apply_identity(&identity("id1").build());
            rig.index
                .apply_binding(&binding("b1", "id1", "cron").build());
            rig.sync();
            for run in 0..3 {
                let name = format!("cron-{run}");
                rig.index
                    .apply_pod(&pod(&name).label("cron").on_node("ss0-0").build());
                rig.sync();
                tokio::time::sleep(Duration::from_secs(20)).await;
                rig.index.delete_pod(&ObjectKey::new("default", &name));
                rig.sync();
                tokio::time::sleep(Duration::from_secs(40)).await;
            }
            // The baseline the grace period improves on.
            assert_eq!(rig.arm.patch_count(), 6);
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn invalid_identity_does_not_block_the_rest_of_the_batch() {
    LocalSet::new()
        .run_until(async {
            let mut rig = Rig::new(Duration::from_secs(2), BatchSettings::default());
            rig.index.apply_node(&vmss_node("ss0", 0));
            for i in ["good1", "deleted", "good2"] {
                rig.index.apply_identity(&identity(i).build());
                rig.index.apply_binding(&binding(i, i, "sel").build());
            }
            rig.arm
                .refuse
                .lock()
                .unwrap()
                .insert(IdentityId::new(&rid("deleted")));
            rig.index
                .apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
            rig.sync();
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_secs(60)).await;
            let good: BTreeSet<_> = [rid("good1"), rid("good2")]
                .iter()
                .map(|r| IdentityId::new(r))
                .collect();
            assert_eq!(rig.arm.on_host(&ss("ss0")), good);
            let at = rig.assigned_at(&ss("ss0"), &good).unwrap();
            assert_eq!(
                at - t0,
                Duration::from_secs(6),
                "read, refused patch, retry"
            );
            let last = rig.last_report(&ss("ss0")).unwrap();
            assert!(last.refused[&IdentityId::new(&rid("deleted"))].contains("not found"));
            // Retried with backoff (10 s, 20 s, 40 s ...), not on every cycle.
            let attempts = rig
                .arm
                .patches
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.add.contains(&IdentityId::new(&rid("deleted"))))
                .count();
            assert!(
                (2..=4).contains(&attempts),
                "{attempts} attempts in a minute"
            );
            // Once the identity exists again, the next retry assigns it.
            rig.arm.refuse.lock().unwrap().clear();
            tokio::time::sleep(Duration::from_secs(200)).await;
            assert_eq!(rig.arm.on_host(&ss("ss0")).len(), 3);
            assert!(rig.last_report(&ss("ss0")).unwrap().refused.is_empty());
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn an_identity_used_by_another_pod_on_the_same_scale_set_is_not_removed() {
    LocalSet::new()
        .run_until(async {
            let mut rig = Rig::new(Duration::from_secs(2), BatchSettings::default());
            rig.index.apply_node(&vmss_node("ss0", 0));
            rig.index.apply_node(&vmss_node("ss0", 1));
            rig.index.apply_identity(&identity("id1").build());
            rig.index
                .apply_binding(&binding("b1", "id1", "sel").build());
            rig.index
                .apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
            rig.index
                .apply_pod(&pod("p2").label("sel").on_node("ss0-1").build());
            rig.sync();
            tokio::time::sleep(Duration::from_secs(10)).await;
            rig.index.delete_pod(&ObjectKey::new("default", "p1"));
            rig.sync();
            tokio::time::sleep(Duration::from_secs(600)).await;
            assert_eq!(rig.arm.on_host(&ss("ss0")).len(), 1);
            assert_eq!(rig.arm.patch_count(), 1, "only the add");
            // The last user gone, it is removed after the grace period.
            rig.index.delete_pod(&ObjectKey::new("default", "p2"));
            rig.sync();
            tokio::time::sleep(Duration::from_secs(59)).await;
            assert_eq!(rig.arm.on_host(&ss("ss0")).len(), 1);
            tokio::time::sleep(Duration::from_secs(10)).await;
            assert!(rig.arm.on_host(&ss("ss0")).is_empty());
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn identities_someone_else_assigned_survive_their_pods() {
    LocalSet::new()
        .run_until(async {
            let mut rig = Rig::new(Duration::from_secs(2), BatchSettings::default());
            rig.arm
                .hosts
                .lock()
                .unwrap()
                .insert(ss("ss0"), BTreeSet::from([IdentityId::new(&rid("id1"))]));
            rig.index.apply_node(&vmss_node("ss0", 0));
            rig.index.apply_identity(&identity("id1").build());
            rig.index
                .apply_binding(&binding("b1", "id1", "sel").build());
            rig.index
                .apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
            rig.sync();
            settle().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert!(rig.last_report(&ss("ss0")).unwrap().assigned.len() == 1);
            rig.index.delete_pod(&ObjectKey::new("default", "p1"));
            rig.sync();
            tokio::time::sleep(Duration::from_secs(600)).await;
            assert_eq!(rig.arm.patch_count(), 0);
            assert_eq!(rig.arm.on_host(&ss("ss0")).len(), 1);
        })
        .await;
}
