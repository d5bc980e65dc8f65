use super::*;
use crate::actors::mic::fixtures::*;
use crate::actors::mic::host::IdentityId;
use crate::actors::mic::matcher::{BindingIndex, MatchSettings};
use crate::crd::{ASSIGNED_IDENTITY_FINALIZER, IdentityType};

fn ss0() -> HostId {
    HostId::scale_set(SUB, RG, "ss0")
}

fn index() -> BindingIndex {
    let mut ix = BindingIndex::new(MatchSettings::default());
    ix.apply_node(&vmss_node("ss0", 0));
    ix.apply_node(&vmss_node("ss0", 1));
    ix.apply_identity(&identity("id1").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix
}

fn desired(ix: &BindingIndex, seq: u64) -> DesiredAssignments {
    let d = ix.desired();
    DesiredAssignments {
        assignments: d.assignments,
        nodes: [("ss0-0".to_string(), ss0()), ("ss0-1".to_string(), ss0())].into(),
        rejections: d.rejections,
        seq,
    }
}

fn report(assigned: &[&str], releasing: &[&str], seq: u64) -> BTreeMap<HostId, HostReport> {
    let ids = |v: &[&str]| v.iter().map(|n| IdentityId::new(&rid(n))).collect();
    [(
        ss0(),
        HostReport {
            host: ss0(),
            assigned: ids(assigned),
            releasing: ids(releasing),
            held: assigned
                .iter()
                .chain(releasing)
                .map(|n| IdentityId::new(&rid(n)))
                .collect(),
            external: BTreeSet::new(),
            refused: BTreeMap::new(),
            failure: None,
            synced: true,
            seq,
        },
    )]
    .into()
}

fn existing_from(
    d: &DesiredAssignments,
    status: AssignedState,
) -> BTreeMap<ObjectKey, AzureAssignedIdentity> {
    d.assignments
        .values()
        .map(|a| (a.key.clone(), object_for(a, status.clone(), false)))
        .collect()
}

#[test]
fn a_new_assignment_is_created_once_its_host_is_read_with_status_created_until_it_confirms() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = desired(&ix, 1);
    // Not read yet: written once the read tells what it is.
    assert!(plan(&BTreeMap::new(), &d, &BTreeMap::new()).is_empty());
    // The read failed: written for users to see, but no record of MIC's (not known to be).
    let mut failing = report(&[], &[], 1);
    let r = failing.get_mut(&ss0()).unwrap();
    r.synced = false;
    r.failure = Some("ARM answered 401".into());
    assert!(matches!(
        &plan(&BTreeMap::new(), &d, &failing)[..],
        [WriteOp::Create {
            status: AssignedState::Created,
            external: true,
            ..
        }]
    ));
    let ops = plan(&BTreeMap::new(), &d, &report(&[], &[], 1));
    assert!(matches!(
        &ops[..],
        [WriteOp::Create {
            status: AssignedState::Created,
            external: false,
            ..
        }]
    ));
    let ops = plan(&BTreeMap::new(), &d, &report(&["id1"], &[], 1));
    assert!(matches!(
        &ops[..],
        [WriteOp::Create {
            status: AssignedState::Assigned,
            ..
        }]
    ));
}

#[test]
fn a_created_object_turns_assigned_when_the_host_reports_the_identity() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = desired(&ix, 1);
    let existing = existing_from(&d, AssignedState::Created);
    assert!(plan(&existing, &d, &report(&[], &[], 1)).is_empty());
    assert_eq!(
        plan(&existing, &d, &report(&["id1"], &[], 1)),
        vec![WriteOp::SetStatus {
            key: ObjectKey::new("default", "p1-default-id1"),
            status: AssignedState::Assigned,
            external: false,
            host: Some(ss0()),
        }]
    );
}

#[test]
fn a_service_principal_assignment_is_assigned_at_once() {
    let mut ix = index();
    ix.apply_identity(
        &identity("sp")
            .type_(IdentityType::ServicePrincipal)
            .resource_id("")
            .build(),
    );
    ix.apply_binding(&binding("b2", "sp", "spsel").build());
    ix.apply_pod(&pod("p1").label("spsel").on_node("ss0-0").build());
    let ops = plan(&BTreeMap::new(), &desired(&ix, 1), &BTreeMap::new());
    assert!(matches!(
        &ops[..],
        [WriteOp::Create {
            status: AssignedState::Assigned,
            ..
        }]
    ));
}

#[test]
fn a_released_assignment_is_unassigned_then_deleted_once_its_host_let_go() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let before = desired(&ix, 1);
    let mut existing = existing_from(&before, AssignedState::Assigned);
    ix.delete_pod(&ObjectKey::new("default", "p1"));
    let after = desired(&ix, 2);
    let key = ObjectKey::new("default", "p1-default-id1");
    assert_eq!(
        plan(&existing, &after, &report(&["id1"], &[], 1)),
        vec![WriteOp::SetStatus {
            key: key.clone(),
            status: AssignedState::Unassigned,
            external: false,
            host: None,
        }]
    );
    existing
        .get_mut(&key)
        .unwrap()
        .status
        .as_mut()
        .unwrap()
        .status = AssignedState::Unassigned;
    // the host has not yet seen the change: keep the record
    assert!(plan(&existing, &after, &report(&["id1"], &[], 1)).is_empty());
    // in its grace period: keep the record, it proves ownership across a restart
    assert!(plan(&existing, &after, &report(&[], &["id1"], 2)).is_empty());
    // removed from the host: delete
    assert_eq!(
        plan(&existing, &after, &report(&[], &[], 2)),
        vec![WriteOp::Delete { key }]
    );
}

#[test]
fn a_pod_moving_to_another_node_updates_the_spec() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let existing = existing_from(&desired(&ix, 1), AssignedState::Assigned);
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-1").build());
    let ops = plan(&existing, &desired(&ix, 2), &report(&["id1"], &[], 2));
    let [
        WriteOp::UpdateSpec {
            assignment, status, ..
        },
    ] = &ops[..]
    else {
        panic!("{ops:?}")
    };
    assert_eq!(assignment.node, "ss0-1");
    assert_eq!(*status, AssignedState::Assigned);
}

#[test]
fn a_refused_identity_and_a_rejected_binding_become_warning_events_on_pod_and_binding() {
    let mut ix = index();
    ix.apply_identity(&identity("other").ns("team-a").build());
    ix.apply_binding(&binding("foreign", "other", "sel2").ns("team-a").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    ix.apply_pod(&pod("p2").label("sel2").on_node("ss0-0").build());
    ix.apply_pod(&pod("p3").label("sel").on_node("ss0-1").build());
    let d = desired(&ix, 1);
    let mut hosts = report(&[], &[], 1);
    hosts.get_mut(&ss0()).unwrap().refused.insert(
        IdentityId::new(&rid("id1")),
        "LinkedAuthorizationFailed".into(),
    );
    let evs = error_events(&d, &hosts);
    assert!(
        evs.iter()
            .all(|e| e.reason == REASON_APPLY_ERROR && e.type_ == "Warning")
    );
    let on = |kind: &str, ns: &str, name: &str| {
        evs.iter()
            .filter(|e| e.kind == kind && e.object == ObjectKey::new(ns, name))
            .collect::<Vec<_>>()
    };
    assert!(
        on("Pod", "default", "p1")[0]
            .message
            .contains("LinkedAuthorizationFailed")
    );
    assert_eq!(on("Pod", "default", "p3").len(), 1);
    // one Event on the binding for both pods
    let b1 = on("AzureIdentityBinding", "default", "b1");
    assert_eq!(b1.len(), 1);
    assert_eq!(b1[0].api_version, "aadpodidentity.k8s.io/v1");
    assert!(
        on("Pod", "default", "p2")[0]
            .message
            .contains("team-a/foreign")
    );
    assert_eq!(on("AzureIdentityBinding", "team-a", "foreign").len(), 1);
    assert_eq!(evs.len(), 5, "{evs:#?}");
}

#[test]
fn the_object_carries_the_original_name_label_finalizer_and_embedded_refs() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = desired(&ix, 1);
    let o = object_for(
        d.assignments.values().next().unwrap(),
        AssignedState::Created,
        false,
    );
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v["metadata"]["name"], "p1-default-id1");
    assert_eq!(v["metadata"]["labels"]["nodename"], "ss0-0");
    assert_eq!(v["metadata"]["finalizers"][0], ASSIGNED_IDENTITY_FINALIZER);
    assert_eq!(
        v["spec"]["azureIdentityRef"]["spec"]["resourceID"],
        rid("id1")
    );
    assert_eq!(v["spec"]["azureBindingRef"]["spec"]["selector"], "sel");
    assert_eq!(v["spec"]["podNamespace"], "default");
    assert_eq!(v["status"]["status"], "Created");
}

#[test]
fn a_partial_plan_skips_writes_in_flight_and_stops_at_its_limit() {
    let mut ix = index();
    for i in 0..10 {
        ix.apply_pod(&pod(&format!("p{i}")).label("sel").on_node("ss0-0").build());
    }
    let d = desired(&ix, 1);
    let hosts = report(&[], &[], 1);
    let all = plan(&BTreeMap::new(), &d, &hosts);
    assert_eq!(all.len(), 10);
    let skip: BTreeSet<ObjectKey> = all[..3].iter().map(|o| o.key().clone()).collect();
    let some = plan_some(&BTreeMap::new(), &d, &hosts, &skip, 4);
    assert_eq!(some, all[3..7].to_vec());
}

/// As the original compared resourceVersions: any edit of the identity or binding an object
/// embeds (a service principal's tenant, its Secret reference, `adEndpoint`, the `Behavior`
/// annotation) rewrites the object, keeping its status; an unchanged one is left alone.
#[test]
fn an_edited_identity_or_binding_is_written_into_the_object() {
    let sp = |tenant: &str, rv: &str| {
        let mut i = identity("id1")
            .type_(crate::crd::IdentityType::ServicePrincipal)
            .build();
        i.spec.tenant_id = tenant.into();
        i.metadata.resource_version = Some(rv.into());
        i
    };
    let bind = |rv: &str| {
        let mut b = binding("b1", "id1", "sel").build();
        b.metadata.resource_version = Some(rv.into());
        b
    };
    let mut ix = index();
    ix.apply_identity(&sp("tenant-a", "1"));
    ix.apply_binding(&bind("8"));
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let before = desired(&ix, 1);
    let existing = existing_from(&before, AssignedState::Assigned);
    assert!(plan(&existing, &before, &report(&[], &[], 1)).is_empty());

    for edit in [
        sp("tenant-b", "2"),
        {
            let mut i = sp("tenant-a", "3");
            i.spec.ad_endpoint = "https://login.microsoftonline.us/".into();
            i
        },
        {
            let mut i = sp("tenant-a", "4");
            i.spec.client_password.name = "rotated".into();
            i
        },
        {
            // Only metadata changed: the resourceVersion says so.
            let mut i = sp("tenant-a", "5");
            i.metadata
                .annotations
                .get_or_insert_default()
                .insert(crate::crd::BEHAVIOR_ANNOTATION.into(), "namespaced".into());
            i
        },
    ] {
        let mut ix = index();
        ix.apply_identity(&edit);
        ix.apply_binding(&bind("8"));
        ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
        let after = desired(&ix, 1);
        let ops = plan(&existing, &after, &report(&[], &[], 1));
        match &ops[..] {
            [
                WriteOp::UpdateSpec {
                    assignment,
                    status: AssignedState::Assigned,
                    ..
                },
            ] => assert_eq!(*assignment.identity, edit),
            other => panic!("edit {:?} gave {other:?}", edit.spec),
        }
    }

    let mut ix = index();
    ix.apply_identity(&sp("tenant-a", "1"));
    ix.apply_binding(&bind("9"));
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let ops = plan(&existing, &desired(&ix, 1), &report(&[], &[], 1));
    assert!(
        matches!(&ops[..], [WriteOp::UpdateSpec { .. }]),
        "an edited binding: {ops:?}"
    );
}

fn host_report(assigned: &[&str], external: &[&str], seq: u64) -> BTreeMap<HostId, HostReport> {
    let mut r = report(assigned, &[], seq);
    r.get_mut(&ss0()).unwrap().external =
        external.iter().map(|n| IdentityId::new(&rid(n))).collect();
    r
}

#[test]
fn an_object_records_the_host_its_identity_goes_on() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let a = desired(&ix, 1).assignments.into_values().next().unwrap();
    let o = object_for(&a, AssignedState::Created, false);
    assert_eq!(
        o.identity_host().and_then(HostId::from_resource_id),
        Some(ss0())
    );
}

#[test]
fn an_object_the_original_wrote_gets_its_host_recorded() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = desired(&ix, 1);
    let mut existing = existing_from(&d, AssignedState::Assigned);
    for o in existing.values_mut() {
        o.metadata.annotations = None;
    }
    assert_eq!(
        plan(&existing, &d, &report(&["id1"], &[], 1)),
        vec![WriteOp::SetStatus {
            key: ObjectKey::new("default", "p1-default-id1"),
            status: AssignedState::Assigned,
            external: false,
            host: Some(ss0()),
        }]
    );
}

/// An identity once someone else's, since removed from the host, is MIC's to add: its object
/// loses the external mark first, so it is the record the PATCH waits for.
#[test]
fn an_external_mark_is_cleared_once_the_host_shows_the_identity_gone() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = desired(&ix, 1);
    let existing: BTreeMap<_, _> = d
        .assignments
        .values()
        .map(|a| (a.key.clone(), object_for(a, AssignedState::Assigned, true)))
        .collect();
    assert!(plan(&existing, &d, &host_report(&["id1"], &["id1"], 1)).is_empty());
    assert!(
        plan(&existing, &d, &BTreeMap::new()).is_empty(),
        "not read yet"
    );
    assert_eq!(
        plan(&existing, &d, &report(&[], &[], 1)),
        vec![WriteOp::SetStatus {
            key: ObjectKey::new("default", "p1-default-id1"),
            status: AssignedState::Assigned,
            external: false,
            host: Some(ss0()),
        }]
    );
}

/// A CronJob's next pod takes over its identity on the scale set: the previous pod's object is
/// the only record of it until the next one's is stored, so it stays until then.
#[test]
fn a_released_object_stays_while_it_is_the_last_record_of_an_identity_mic_holds() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let before = desired(&ix, 1);
    let mut existing = existing_from(&before, AssignedState::Unassigned);
    ix.delete_pod(&ObjectKey::new("default", "p1"));
    ix.apply_pod(&pod("p2").label("sel").on_node("ss0-1").build());
    let after = desired(&ix, 2);
    let ops = plan(&existing, &after, &report(&["id1"], &[], 2));
    assert!(
        ops.iter().all(|o| !matches!(o, WriteOp::Delete { .. })),
        "{ops:?}"
    );
    existing.extend(existing_from(&after, AssignedState::Assigned));
    let ops = plan(&existing, &after, &report(&["id1"], &[], 2));
    assert_eq!(
        ops,
        vec![WriteOp::Delete {
            key: ObjectKey::new("default", "p1-default-id1")
        }]
    );
    // Someone else's identity has no record to keep.
    let mut existing = existing_from(&before, AssignedState::Unassigned);
    for o in existing.values_mut() {
        o.metadata.annotations.get_or_insert_default().insert(
            crate::crd::IDENTITY_OWNER_ANNOTATION.into(),
            "external".into(),
        );
    }
    let ops = plan(&existing, &after, &host_report(&["id1"], &["id1"], 2));
    assert!(ops.contains(&WriteOp::Delete {
        key: ObjectKey::new("default", "p1-default-id1")
    }));
}

/// The chaos run's third leak: two released objects each took the other for the record that
/// would stay, both were deleted, and the PATCH their records had let out put the identity on
/// the host with no record left. Released objects never count on each other.
#[test]
fn released_objects_never_count_on_each_other_as_the_record_that_stays() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    ix.apply_pod(&pod("p3").label("sel").on_node("ss0-1").build());
    let existing = existing_from(&desired(&ix, 1), AssignedState::Unassigned);
    ix.delete_pod(&ObjectKey::new("default", "p1"));
    ix.delete_pod(&ObjectKey::new("default", "p3"));
    ix.apply_pod(&pod("p2").label("sel").on_node("ss0-1").build());
    let after = desired(&ix, 2);
    // The identity is wanted again and not on the host: the next PATCH may add it.
    let mut hosts = report(&[], &[], 2);
    hosts.get_mut(&ss0()).unwrap().held = [IdentityId::new(&rid("id1"))].into();
    let ops = plan(&existing, &after, &hosts);
    assert!(
        ops.iter().all(|o| !matches!(o, WriteOp::Delete { .. })),
        "{ops:?}"
    );
}

/// Polls `f` every 20 ms until it holds (real time: the API server is a real one on loopback).
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f().await {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A leader deposed while its actor thread was behind: the writer decides a status write and
/// the recorder an Event after the election thread stepped down. Neither reaches the API server
/// (the Kubernetes simulator, over HTTP), and each refusal is counted. On the old code only ARM
/// PATCHes were fenced: the same sequence wrote `Assigned` and the Event.
#[tokio::test]
async fn a_deposed_leaders_writer_and_recorder_send_nothing_and_count_each_refusal() {
    use crate::actors::mic::fence::{Fence, FenceLayer};
    use crate::actors::mic::leader::Error as LeaderError;
    use crate::actors::mic::leader_thread::Leadership;
    use crate::actors::mic::recorder::Recorder;
    use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig};
    use k8s_openapi::api::core::v1::Event;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, ListParams, PostParams};

    tokio::task::LocalSet::new()
        .run_until(async {
            let sim = KubeSim::start(KubeSimConfig {
                run_cluster: false,
                ..KubeSimConfig::default()
            })
            .await
            .unwrap();
            let admin = sim.client().await.unwrap();
            let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
            for f in crate::crd::all_crds() {
                crds.create(&PostParams::default(), &f.crd).await.unwrap();
            }
            let kubeconfig = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig_yaml()).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .unwrap();
            let (leadership, state) = tokio::sync::watch::channel(Leadership::Leading);
            let metrics = MicMetrics::unregistered().unwrap();
            let fenced = metrics.fenced_writes.clone();
            let client = crate::kube_client::fenced_client(
                config,
                &crate::kube_client::ClientOptions {
                    user_agent: "mic-test".into(),
                    qps: None,
                },
                Some(FenceLayer(Fence::new(state, fenced.clone()))),
            )
            .unwrap();
            let recorder = Recorder::new(client.clone(), metrics.clone()).start();
            let writer = Writer::new(client, recorder.clone().recipient(), metrics, 20).start();

            let mut ix = index();
            ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
            let d = desired(&ix, 1);
            let key = d.assignments.keys().next().unwrap().clone();
            writer.do_send(AssignedEvent::Relisted(Vec::new()));
            writer.do_send(d);
            writer.do_send(report(&[], &[], 1).remove(&ss0()).unwrap());
            let aais: Api<AzureAssignedIdentity> = Api::namespaced(admin.clone(), &key.namespace);
            let status = async || {
                aais.get_opt(&key.name)
                    .await
                    .unwrap()
                    .map(|o| status_of(&o))
            };
            until("the leader's create", async || {
                status().await == Some(AssignedState::Created)
            })
            .await;

            leadership
                .send(Leadership::SteppedDown(LeaderError::Thread(
                    "deposed".into(),
                )))
                .unwrap();
            // The host now shows the identity: the writer decides the status write `Assigned`
            // (and, were it written, the "binding applied" Event).
            writer.do_send(report(&["id1"], &[], 1).remove(&ss0()).unwrap());
            until("the status write, refused or sent", async || {
                fenced.with_label_values(&["assigned_identity"]).get() == 1
                    || status().await != Some(AssignedState::Created)
            })
            .await;
            assert_eq!(
                status().await,
                Some(AssignedState::Created),
                "the deposed leader's status write reached the API server"
            );
            assert_eq!(fenced.with_label_values(&["assigned_identity"]).get(), 1);
            recorder.do_send(crate::actors::mic::recorder::Record(UserEvent::on_pod(
                &ObjectKey::new("default", "p1"),
                "",
                "Warning",
                REASON_APPLY_ERROR,
                "late".into(),
            )));
            until("the refused Event", async || {
                fenced.with_label_values(&["event"]).get() == 1
            })
            .await;

            assert_eq!(
                status().await,
                Some(AssignedState::Created),
                "never Assigned"
            );
            let events: Api<Event> = Api::namespaced(admin, "default");
            let written = events.list(&ListParams::default()).await.unwrap().items;
            assert!(written.is_empty(), "{written:?}");
            sim.shutdown().await;
        })
        .await;
}

/// The watch's copy of an object is taken only when it is a later version than the stored one:
/// the echo of the writer's own write (the version its answer stored) changes nothing, so it
/// costs no copy and no planning pass (on the old code the echo was applied again).
#[test]
fn only_a_later_version_from_the_watch_replaces_the_stored_copy() {
    let mut ix = index();
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = desired(&ix, 1);
    let at = |rv: Option<&str>| {
        let mut o = existing_from(&d, AssignedState::Created)
            .into_values()
            .next()
            .unwrap();
        o.metadata.resource_version = rv.map(str::to_string);
        o
    };
    let stored = at(Some("7"));
    assert!(!Writer::newer(Some(&stored), &at(Some("7"))), "the echo");
    assert!(
        !Writer::newer(Some(&stored), &at(Some("6"))),
        "an older copy"
    );
    assert!(Writer::newer(Some(&stored), &at(Some("8"))));
    assert!(Writer::newer(None, &at(Some("1"))), "a new object");
    assert!(
        Writer::newer(Some(&stored), &at(None)),
        "no version to compare"
    );
}
