use super::*;
use crate::actors::mic::fixtures::*;

fn cluster_wide() -> MatchSettings {
    MatchSettings {
        force_namespaced: false,
        ..MatchSettings::default()
    }
}

fn seeded(settings: MatchSettings) -> BindingIndex {
    let mut ix = BindingIndex::new(settings);
    ix.apply_node(&vmss_node("ss0", 0));
    ix.apply_node(&vmss_node("ss0", 1));
    ix.apply_node(&vmss_node("ss1", 0));
    ix
}

fn ss(name: &str) -> HostId {
    HostId::scale_set(SUB, RG, name)
}

#[test]
fn a_labelled_pod_gets_the_identity_of_the_binding_with_its_selector() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = ix.desired();
    assert_eq!(d.assignments.len(), 1);
    let a = d.assignments.values().next().unwrap();
    assert_eq!(a.key, ObjectKey::new("default", "p1-default-id1"));
    assert_eq!(a.node, "ss0-0");
    assert_eq!(
        a.target,
        Target::Msi {
            host: ss("ss0"),
            id: IdentityId::new(&rid("id1"))
        }
    );
    assert_eq!(d.hosts[&ss("ss0")].len(), 1);
    assert!(
        d.hosts[&ss("ss1")].is_empty(),
        "known hosts are listed even when empty"
    );
    assert!(d.rejections.is_empty());
}

#[test]
fn a_selector_must_match_exactly() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_pod(&pod("p1").label("Sel").on_node("ss0-0").build());
    ix.apply_pod(&pod("p2").label("sel2").on_node("ss0-0").build());
    ix.apply_pod(&pod("p3").on_node("ss0-0").build());
    assert!(ix.desired().assignments.is_empty());
}

#[test]
fn pods_of_one_scale_set_share_one_entry_per_identity() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_identity(&identity("id2").build());
    ix.apply_binding(&binding("b1", "id1", "a").build());
    ix.apply_binding(&binding("b2", "id2", "b").build());
    ix.apply_pod(&pod("p1").label("a").on_node("ss0-0").build());
    ix.apply_pod(&pod("p2").label("a").on_node("ss0-1").build());
    ix.apply_pod(&pod("p3").label("b").on_node("ss1-0").build());
    let d = ix.desired();
    assert_eq!(d.assignments.len(), 3);
    assert_eq!(
        d.hosts[&ss("ss0")],
        BTreeSet::from([IdentityId::new(&rid("id1"))])
    );
    assert_eq!(
        d.hosts[&ss("ss1")],
        BTreeSet::from([IdentityId::new(&rid("id2"))])
    );
}

#[test]
fn two_bindings_with_one_selector_give_the_pod_both_identities() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_identity(&identity("id2").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_binding(&binding("b2", "id2", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = ix.desired();
    let names: Vec<_> = d.assignments.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["p1-default-id1", "p1-default-id2"]);
}

#[test]
fn finished_unscheduled_and_deleted_pods_need_nothing() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_pod(
        &pod("done")
            .label("sel")
            .on_node("ss0-0")
            .phase("Succeeded")
            .build(),
    );
    ix.apply_pod(
        &pod("failed")
            .label("sel")
            .on_node("ss0-0")
            .phase("Failed")
            .build(),
    );
    ix.apply_pod(&pod("pending").label("sel").build());
    ix.apply_pod(&pod("gone").label("sel").on_node("ss0-0").build());
    ix.delete_pod(&ObjectKey::new("default", "gone"));
    let d = ix.desired();
    assert!(d.assignments.is_empty(), "{:?}", d.assignments.keys());
    assert!(d.hosts[&ss("ss0")].is_empty());
}

#[test]
fn removing_the_label_releases_the_identity() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    assert_eq!(ix.desired().assignments.len(), 1);
    ix.apply_pod(&pod("p1").on_node("ss0-0").build());
    assert!(ix.desired().assignments.is_empty());
    assert_eq!(ix.pod_count(), 0);
}

#[test]
fn deleting_the_binding_or_the_identity_releases_the_identity() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    ix.delete_binding(&ObjectKey::new("default", "b1"));
    assert!(ix.desired().assignments.is_empty());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.delete_identity(&ObjectKey::new("default", "id1"));
    let d = ix.desired();
    assert!(d.assignments.is_empty());
    assert!(matches!(
        d.rejections[0].reason,
        RejectReason::IdentityMissing { .. }
    ));
}

#[test]
fn namespaced_matching_is_the_default_and_rejects_a_binding_from_another_namespace() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").ns("team-a").build());
    ix.apply_binding(&binding("b1", "id1", "sel").ns("team-a").build());
    ix.apply_pod(&pod("p1").ns("team-b").label("sel").on_node("ss0-0").build());
    let d = ix.desired();
    assert!(d.assignments.is_empty());
    assert_eq!(d.rejections.len(), 1);
    let r = &d.rejections[0];
    assert_eq!(r.pod, ObjectKey::new("team-b", "p1"));
    assert_eq!(r.pod_uid, "uid-team-b-p1");
    assert!(matches!(r.reason, RejectReason::CrossNamespace { .. }));
    assert!(r.reason.to_string().contains("team-a/b1"), "{}", r.reason);
}

#[test]
fn namespaced_matching_puts_the_assigned_identity_in_the_identity_namespace() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").ns("team-a").build());
    ix.apply_binding(&binding("b1", "id1", "sel").ns("team-a").build());
    ix.apply_pod(&pod("p1").ns("team-a").label("sel").on_node("ss0-0").build());
    let d = ix.desired();
    assert!(
        d.assignments
            .contains_key(&ObjectKey::new("team-a", "p1-team-a-id1"))
    );
}

#[test]
fn a_foreign_binding_with_the_same_selector_is_not_reported_when_the_home_one_matches() {
    let mut ix = seeded(MatchSettings::default());
    for ns in ["team-a", "team-b"] {
        ix.apply_identity(&identity("id1").ns(ns).build());
        ix.apply_binding(&binding("b1", "id1", "sel").ns(ns).build());
    }
    ix.apply_pod(&pod("p1").ns("team-b").label("sel").on_node("ss0-0").build());
    let d = ix.desired();
    assert_eq!(d.assignments.len(), 1);
    assert!(d.rejections.is_empty(), "{:?}", d.rejections);
}

#[test]
fn cluster_wide_mode_matches_across_namespaces_and_writes_to_default() {
    let mut ix = seeded(cluster_wide());
    ix.apply_identity(&identity("id1").ns("team-a").build());
    ix.apply_binding(&binding("b1", "id1", "sel").ns("team-a").build());
    ix.apply_pod(&pod("p1").ns("team-b").label("sel").on_node("ss0-0").build());
    let d = ix.desired();
    assert!(d.rejections.is_empty());
    assert!(
        d.assignments
            .contains_key(&ObjectKey::new("default", "p1-team-b-id1"))
    );
}

#[test]
fn the_namespaced_annotation_makes_one_identity_namespaced_in_cluster_wide_mode() {
    let mut ix = seeded(cluster_wide());
    ix.apply_identity(&identity("strict").ns("team-a").namespaced().build());
    ix.apply_identity(&identity("open").ns("team-a").build());
    ix.apply_binding(&binding("b1", "strict", "sel").ns("team-a").build());
    ix.apply_binding(&binding("b2", "open", "sel").ns("team-a").build());
    ix.apply_pod(&pod("p1").ns("team-b").label("sel").on_node("ss0-0").build());
    ix.apply_pod(&pod("p2").ns("team-a").label("sel").on_node("ss0-0").build());
    let d = ix.desired();
    let keys: BTreeSet<_> = d.assignments.keys().cloned().collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            ObjectKey::new("default", "p1-team-b-open"),
            ObjectKey::new("default", "p2-team-a-open"),
            ObjectKey::new("team-a", "p2-team-a-strict"),
        ])
    );
    // p1 matched `open`, so the refused `strict` is not worth an Event.
    assert!(d.rejections.is_empty(), "{:?}", d.rejections);
}

#[test]
fn an_invalid_resource_id_is_refused_with_the_reason_and_blocks_nothing_else() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("bad").resource_id("/subscriptions/s/oops").build());
    ix.apply_identity(&identity("good").build());
    ix.apply_binding(&binding("b1", "bad", "sel").build());
    ix.apply_binding(&binding("b2", "good", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = ix.desired();
    assert_eq!(d.assignments.len(), 1);
    assert_eq!(d.rejections.len(), 1);
    let text = d.rejections[0].reason.to_string();
    assert!(
        text.contains("default/bad") && text.contains("8 segments"),
        "{text}"
    );
}

#[test]
fn service_principal_identities_need_no_host() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(
        &identity("sp")
            .type_(IdentityType::ServicePrincipal)
            .resource_id("")
            .build(),
    );
    ix.apply_binding(&binding("b1", "sp", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = ix.desired();
    assert_eq!(
        d.assignments.values().next().unwrap().target,
        Target::ServicePrincipal
    );
    assert!(d.hosts[&ss("ss0")].is_empty());
}

#[test]
fn a_federated_identity_never_reaches_a_host() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    assert_eq!(ix.desired().hosts[&ss("ss0")].len(), 1);
    // Migrating it to federation: the same pod keeps its assignment, the scale set no longer
    // needs the identity (its assigner releases what it added).
    ix.apply_identity(&identity("id1").federated().build());
    let d = ix.desired();
    let a = d.assignments.values().next().unwrap();
    assert_eq!(a.target, Target::Federated);
    assert!(d.hosts.values().all(BTreeSet::is_empty), "{:?}", d.hosts);
    // Nor does it need a usable resource id, or a node MIC has seen.
    ix.apply_identity(&identity("id1").federated().resource_id("").build());
    ix.apply_pod(&pod("p2").label("sel").on_node("unknown-node").build());
    let d = ix.desired();
    assert_eq!(d.assignments.len(), 2);
    assert!(
        d.assignments
            .values()
            .all(|a| a.target == Target::Federated)
    );
    assert!(d.rejections.is_empty(), "{:?}", d.rejections);
}

#[test]
fn an_unknown_identity_type_is_refused_visibly() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("weird").type_(IdentityType::Unknown(7)).build());
    ix.apply_binding(&binding("b1", "weird", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    let d = ix.desired();
    assert!(d.assignments.is_empty());
    assert!(d.rejections[0].reason.to_string().contains("type 7"));
}

#[test]
fn a_pod_on_a_node_not_yet_seen_waits_silently_and_matches_once_the_node_arrives() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("vm7").build());
    let d = ix.desired();
    assert!(d.assignments.is_empty() && d.rejections.is_empty());
    ix.apply_node(&vm_node("vm7"));
    let d = ix.desired();
    assert_eq!(
        d.assignments.values().next().unwrap().target,
        Target::Msi {
            host: HostId::vm(SUB, RG, "vm7"),
            id: IdentityId::new(&rid("id1"))
        }
    );
}

#[test]
fn a_node_without_an_azure_provider_id_is_reported_on_its_pods() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_node(&node_with_provider("kind-node", "kind://docker/kind-node"));
    ix.apply_identity(&identity("id1").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("kind-node").build());
    let d = ix.desired();
    assert!(matches!(
        d.rejections[0].reason,
        RejectReason::NodeWithoutHost { .. }
    ));
}

#[test]
fn deleting_a_node_releases_what_its_pods_needed() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss1-0").build());
    assert_eq!(ix.desired().hosts[&ss("ss1")].len(), 1);
    ix.delete_node("ss1-0");
    let d = ix.desired();
    assert!(d.assignments.is_empty());
    assert!(!d.hosts.contains_key(&ss("ss1")));
    assert!(ix.host_of_node("ss1-0").is_none());
}

#[test]
fn immutable_client_ids_are_reported_as_resource_ids() {
    let mut ix = seeded(MatchSettings {
        immutable_client_ids: BTreeSet::from(["client-id1".to_string()]),
        ..MatchSettings::default()
    });
    ix.apply_identity(&identity("id1").build());
    ix.apply_identity(&identity("id2").build());
    assert_eq!(
        ix.desired().immutable,
        BTreeSet::from([IdentityId::new(&rid("id1"))])
    );
}

#[test]
fn changing_the_binding_to_another_identity_moves_the_assignment() {
    let mut ix = seeded(MatchSettings::default());
    ix.apply_identity(&identity("id1").build());
    ix.apply_identity(&identity("id2").build());
    ix.apply_binding(&binding("b1", "id1", "sel").build());
    ix.apply_pod(&pod("p1").label("sel").on_node("ss0-0").build());
    ix.apply_binding(&binding("b1", "id2", "sel").build());
    let d = ix.desired();
    let names: Vec<_> = d.assignments.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["p1-default-id2"]);
    assert_eq!(
        d.hosts[&ss("ss0")],
        BTreeSet::from([IdentityId::new(&rid("id2"))])
    );
}
