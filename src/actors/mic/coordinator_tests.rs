use super::*;
use crate::actors::mic::fixtures::*;
use crate::actors::mic::writer::object_for;
use crate::crd::{AssignedState, AzureIdentity};
use std::sync::{Arc, Mutex};
use tokio::task::LocalSet;

#[derive(Default)]
struct Seen {
    desired: Vec<SetDesired>,
    adopted: Vec<Adopt>,
    recorded: Vec<SetRecorded>,
    writer: Vec<DesiredAssignments>,
    assigned: usize,
    retired: usize,
    made: Vec<HostId>,
}

struct Sink(Arc<Mutex<Seen>>);
impl Actor for Sink {
    type Context = Context<Self>;
}
impl Handler<SetDesired> for Sink {
    type Result = ();
    fn handle(&mut self, m: SetDesired, _: &mut Context<Self>) {
        self.0.lock().unwrap().desired.push(m);
    }
}
impl Handler<Adopt> for Sink {
    type Result = ();
    fn handle(&mut self, m: Adopt, _: &mut Context<Self>) {
        self.0.lock().unwrap().adopted.push(m);
    }
}
impl Handler<SetRecorded> for Sink {
    type Result = ();
    fn handle(&mut self, m: SetRecorded, _: &mut Context<Self>) {
        self.0.lock().unwrap().recorded.push(m);
    }
}
impl Handler<Reconcile> for Sink {
    type Result = ();
    fn handle(&mut self, _: Reconcile, _: &mut Context<Self>) {}
}
impl Handler<Retire> for Sink {
    type Result = ();
    fn handle(&mut self, _: Retire, _: &mut Context<Self>) {
        self.0.lock().unwrap().retired += 1;
    }
}
impl Handler<DesiredAssignments> for Sink {
    type Result = ();
    fn handle(&mut self, m: DesiredAssignments, _: &mut Context<Self>) {
        self.0.lock().unwrap().writer.push(m);
    }
}
impl Handler<AssignedEvent> for Sink {
    type Result = ();
    fn handle(&mut self, _: AssignedEvent, _: &mut Context<Self>) {
        self.0.lock().unwrap().assigned += 1;
    }
}

fn start() -> (Addr<Coordinator>, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = Sink(seen.clone()).start();
    let s2 = sink.clone();
    let made = seen.clone();
    let factory: AssignerFactory = Box::new(move |host, _| {
        made.lock().unwrap().made.push(host.clone());
        AssignerHandle {
            desired: s2.clone().recipient(),
            adopt: s2.clone().recipient(),
            reconcile: s2.clone().recipient(),
            retire: s2.clone().recipient(),
            recorded: s2.clone().recipient(),
        }
    });
    let c = Coordinator::new(
        MatchSettings::default(),
        sink.clone().recipient(),
        sink.recipient(),
        factory,
        Duration::from_secs(180),
        crate::actors::mic::metrics::MicMetrics::unregistered().unwrap(),
    )
    .start();
    (c, seen)
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn nothing_is_sent_before_every_watch_has_listed_then_one_pass_covers_the_burst() {
    LocalSet::new()
        .run_until(async {
            let (c, seen) = start();
            c.do_send(CatalogEvent::Node(Observed::Relisted(vec![vmss_node(
                "ss0", 0,
            )])));
            c.do_send(CatalogEvent::Identity(Observed::Relisted(vec![
                identity("id1").build(),
            ])));
            c.do_send(CatalogEvent::Binding(Observed::Relisted(vec![
                binding("b1", "id1", "sel").build(),
            ])));
            c.do_send(CatalogEvent::Pod(Observed::Relisted(vec![
                pod("p1").label("sel").on_node("ss0-0").build().into(),
            ])));
            pause().await;
            assert!(seen.lock().unwrap().desired.is_empty());
            c.do_send(CatalogEvent::Assigned(Observed::Relisted(vec![])));
            for i in 2..50 {
                c.do_send(CatalogEvent::Pod(Observed::Applied(Box::new(
                    pod(&format!("p{i}"))
                        .label("sel")
                        .on_node("ss0-0")
                        .build()
                        .into(),
                ))));
            }
            pause().await;
            let s = seen.lock().unwrap();
            assert_eq!(s.desired.len(), 1, "one pass for the burst");
            assert_eq!(s.desired[0].desired.len(), 1);
            assert_eq!(s.writer.len(), 1);
            assert_eq!(s.writer[0].assignments.len(), 49);
            assert_eq!(s.writer[0].seq, s.desired[0].seq);
            assert_eq!(s.assigned, 1, "the relist is forwarded to the writer");
        })
        .await;
}

/// A restarted MIC's first lists: one node, no identity, binding or pod left, and the Assigned
/// objects that a pod (`gone`, bound to `identity` through selector `sel`) left behind; returns
/// how many.
fn restart_with_objects_of(c: &Addr<Coordinator>, identity: AzureIdentity) -> usize {
    restart_with_objects_and_nodes(c, identity, vec![vmss_node("ss0", 0)])
}

/// [`restart_with_objects_of`] with these nodes left (the pod's was `ss0-0`).
fn restart_with_objects_and_nodes(
    c: &Addr<Coordinator>,
    identity: AzureIdentity,
    nodes: Vec<k8s_openapi::api::core::v1::Node>,
) -> usize {
    let mut ix = BindingIndex::new(MatchSettings::default());
    ix.apply_node(&vmss_node("ss0", 0));
    let name = identity.name_any();
    ix.apply_identity(&identity);
    ix.apply_binding(&binding("b1", &name, "sel").build());
    ix.apply_pod(&pod("gone").label("sel").on_node("ss0-0").build());
    let before: Vec<_> = ix
        .desired()
        .assignments
        .values()
        .map(|a| object_for(a, AssignedState::Assigned, false))
        .collect();
    let n = before.len();
    c.do_send(CatalogEvent::Node(Observed::Relisted(nodes)));
    c.do_send(CatalogEvent::Identity(Observed::Relisted(vec![])));
    c.do_send(CatalogEvent::Binding(Observed::Relisted(vec![])));
    c.do_send(CatalogEvent::Pod(Observed::Relisted(vec![])));
    c.do_send(CatalogEvent::Assigned(Observed::Relisted(before)));
    n
}

#[tokio::test(start_paused = true)]
async fn assigned_identities_present_at_start_are_adopted_by_their_host() {
    LocalSet::new()
        .run_until(async {
            let (c, seen) = start();
            restart_with_objects_of(&c, identity("old").build());
            pause().await;
            let s = seen.lock().unwrap();
            assert_eq!(s.adopted.len(), 1);
            assert!(s.adopted[0].ids.contains(&IdentityId::new(&rid("old"))));
            assert!(
                s.desired[0].desired.is_empty(),
                "and released: nothing needs it"
            );
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_federated_identitys_objects_never_make_a_restarted_mic_adopt_it() {
    LocalSet::new()
        .run_until(async {
            let (c, seen) = start();
            assert_eq!(
                restart_with_objects_of(&c, identity("fed").federated().build()),
                1
            );
            pause().await;
            let s = seen.lock().unwrap();
            assert!(
                s.adopted.is_empty(),
                "an Assigned object of a federated identity records no ARM write"
            );
        })
        .await;
}

fn listed_with_pod_on_ss0(c: &Addr<Coordinator>) {
    c.do_send(CatalogEvent::Node(Observed::Relisted(vec![vmss_node(
        "ss0", 0,
    )])));
    c.do_send(CatalogEvent::Identity(Observed::Relisted(vec![
        identity("id1").build(),
    ])));
    c.do_send(CatalogEvent::Binding(Observed::Relisted(vec![
        binding("b1", "id1", "sel").build(),
    ])));
    c.do_send(CatalogEvent::Pod(Observed::Relisted(vec![
        pod("p1").label("sel").on_node("ss0-0").build().into(),
    ])));
    c.do_send(CatalogEvent::Assigned(Observed::Relisted(vec![])));
}

fn ss0() -> HostId {
    HostId::scale_set(SUB, RG, "ss0")
}

fn retirement(seq: u64, gone: bool) -> RetirementRequest {
    RetirementRequest {
        host: ss0(),
        seq,
        gone,
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_assigner_is_retired_once_its_host_has_no_node_and_a_later_pod_gets_a_fresh_one() {
    LocalSet::new()
        .run_until(async {
            let (c, seen) = start();
            listed_with_pod_on_ss0(&c);
            pause().await;
            assert_eq!(seen.lock().unwrap().made, vec![ss0()]);
            // The pod goes: its assigner is idle, but a node is still on the host.
            c.do_send(CatalogEvent::Pod(Observed::Deleted(Box::new(
                pod("p1").label("sel").on_node("ss0-0").build().into(),
            ))));
            pause().await;
            let seq = seen.lock().unwrap().desired.last().unwrap().seq;
            c.do_send(retirement(seq, false));
            pause().await;
            assert_eq!(
                seen.lock().unwrap().retired,
                0,
                "kept while a node is there"
            );
            // The node goes too.
            c.do_send(CatalogEvent::Node(Observed::Deleted(Box::new(vmss_node(
                "ss0", 0,
            )))));
            pause().await;
            let seq = seen.lock().unwrap().desired.last().unwrap().seq;
            // A request from before that state is stale: a newer SetDesired is on its way.
            c.do_send(retirement(seq - 1, false));
            pause().await;
            assert_eq!(seen.lock().unwrap().retired, 0);
            c.do_send(retirement(seq, false));
            pause().await;
            assert_eq!(seen.lock().unwrap().retired, 1);
            // Nothing more goes to a retired assigner; a new pod on the host gets a fresh one.
            let sent = seen.lock().unwrap().desired.len();
            c.do_send(CatalogEvent::Pod(Observed::Deleted(Box::new(
                pod("p0").label("sel").on_node("ss0-0").build().into(),
            ))));
            pause().await;
            assert_eq!(seen.lock().unwrap().desired.len(), sent);
            c.do_send(CatalogEvent::Node(Observed::Applied(Box::new(vmss_node(
                "ss0", 0,
            )))));
            c.do_send(CatalogEvent::Pod(Observed::Applied(Box::new(
                pod("p2").label("sel").on_node("ss0-0").build().into(),
            ))));
            pause().await;
            let s = seen.lock().unwrap();
            assert_eq!(s.made, vec![ss0(), ss0()]);
            assert_eq!(s.desired.len(), sent + 1);
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_host_arm_says_is_gone_gets_no_assigner_until_a_node_appears_on_it_or_the_interval_passes()
 {
    LocalSet::new()
        .run_until(async {
            let (c, seen) = start();
            listed_with_pod_on_ss0(&c);
            pause().await;
            // Gone: retired though its pod still wants the identity.
            c.do_send(retirement(0, true));
            pause().await;
            assert_eq!(seen.lock().unwrap().retired, 1);
            for i in 2..5 {
                c.do_send(CatalogEvent::Pod(Observed::Applied(Box::new(
                    pod(&format!("p{i}"))
                        .label("sel")
                        .on_node("ss0-0")
                        .build()
                        .into(),
                ))));
                pause().await;
            }
            assert_eq!(
                seen.lock().unwrap().made.len(),
                1,
                "no assigner for a host not there"
            );
            // A node registers on it: the scale set was re-created.
            c.do_send(CatalogEvent::Node(Observed::Applied(Box::new(vmss_node(
                "ss0", 1,
            )))));
            pause().await;
            assert_eq!(seen.lock().unwrap().made.len(), 2);
            // Gone again; after the reconcile interval (180 s here) it is tried once more.
            c.do_send(retirement(0, true));
            pause().await;
            tokio::time::advance(Duration::from_secs(181)).await;
            c.do_send(CatalogEvent::Pod(Observed::Applied(Box::new(
                pod("p9").label("sel").on_node("ss0-0").build().into(),
            ))));
            pause().await;
            assert_eq!(seen.lock().unwrap().made.len(), 3);
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn identities_on_a_host_whose_nodes_were_all_deleted_are_adopted_by_the_host_recorded() {
    LocalSet::new()
        .run_until(async {
            let (c, seen) = start();
            // The node went while no MIC ran: only the object's annotation names the host.
            restart_with_objects_and_nodes(&c, identity("old").build(), vec![]);
            pause().await;
            let s = seen.lock().unwrap();
            assert_eq!(s.made, vec![ss0()], "the recorded host gets an assigner");
            assert_eq!(s.adopted.len(), 1);
            assert!(s.adopted[0].ids.contains(&IdentityId::new(&rid("old"))));
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn the_writers_records_reach_the_hosts_assigner_now_and_when_it_is_made_again() {
    LocalSet::new()
        .run_until(async {
            let (c, seen) = start();
            let recorded: BTreeSet<IdentityId> = [IdentityId::new(&rid("id1"))].into();
            c.do_send(HostRecords([(ss0(), recorded.clone())].into()));
            listed_with_pod_on_ss0(&c);
            pause().await;
            {
                let s = seen.lock().unwrap();
                assert_eq!(s.made, vec![ss0()]);
                assert_eq!(s.recorded.len(), 1, "given to the new assigner");
                assert_eq!(s.recorded[0].ids, recorded);
            }
            c.do_send(HostRecords([(ss0(), BTreeSet::new())].into()));
            pause().await;
            let s = seen.lock().unwrap();
            assert_eq!(s.recorded.len(), 2);
            assert!(s.recorded[1].ids.is_empty(), "the last record went");
        })
        .await;
}
