use super::*;
use serde_json::json;

fn setup(history: usize) -> (Store, Arc<ResourceInfo>, Arc<ResourceInfo>) {
    let registry = Arc::new(Registry::default());
    let store = Store::new(registry.clone(), history);
    let ns = registry.get("", "v1", "namespaces").unwrap();
    store
        .create(&ns, "", json!({"metadata": {"name": "default"}}))
        .unwrap();
    let pods = registry.get("", "v1", "pods").unwrap();
    let cms = registry.get("", "v1", "configmaps").unwrap();
    (store, pods, cms)
}

fn pod(name: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"app": "x"}}, "spec": {"containers": [{"name": "c"}]}})
}

#[test]
fn create_fills_identity_fields_and_refuses_duplicates() {
    let (store, pods, _) = setup(100);
    let p = store.create(&pods, "default", pod("a")).unwrap();
    assert!(!uid_of(&p).is_empty());
    assert!(meta_str(&p, "creationTimestamp").is_some());
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(p["kind"], "Pod");
    let e = store.create(&pods, "default", pod("a")).unwrap_err();
    assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
    let e = store.create(&pods, "nope", pod("b")).unwrap_err();
    assert_eq!(e.code, 404);
}

#[test]
fn generate_name_gives_distinct_names() {
    let (store, pods, _) = setup(100);
    let a = store
        .create(
            &pods,
            "default",
            json!({"metadata": {"generateName": "web-"}}),
        )
        .unwrap();
    let b = store
        .create(
            &pods,
            "default",
            json!({"metadata": {"generateName": "web-"}}),
        )
        .unwrap();
    assert!(name_of(&a).starts_with("web-") && name_of(&a).len() == 9);
    assert_ne!(name_of(&a), name_of(&b));
    let e = store
        .create(&pods, "default", json!({"metadata": {}}))
        .unwrap_err();
    assert_eq!(e.code, 422);
}

#[test]
fn stale_resource_version_is_a_conflict_and_changes_nothing() {
    let (store, _, cms) = setup(100);
    let c = store
        .create(
            &cms,
            "default",
            json!({"metadata": {"name": "c"}, "data": {"k": "1"}}),
        )
        .unwrap();
    let mut v1 = (*c).clone();
    v1["data"]["k"] = json!("2");
    store
        .update(&cms, "default", "c", v1.clone(), false)
        .unwrap();
    v1["data"]["k"] = json!("3");
    let e = store.update(&cms, "default", "c", v1, false).unwrap_err();
    assert_eq!((e.code, e.reason), (409, "Conflict"));
    assert_eq!(store.get(&cms, "default", "c").unwrap()["data"]["k"], "2");
}

#[test]
fn status_subresource_separates_spec_and_status_writes() {
    let (store, pods, _) = setup(100);
    let p = store.create(&pods, "default", pod("a")).unwrap();
    let mut body = (*p).clone();
    body["status"]["phase"] = json!("Running");
    body["metadata"]["labels"]["app"] = json!("y");
    let after = store
        .update(&pods, "default", "a", body.clone(), false)
        .unwrap();
    assert_eq!(after["status"]["phase"], "Pending");
    assert_eq!(after["metadata"]["labels"]["app"], "y");
    body["metadata"]["resourceVersion"] = after["metadata"]["resourceVersion"].clone();
    body["metadata"]["labels"]["app"] = json!("z");
    let after = store.update(&pods, "default", "a", body, true).unwrap();
    assert_eq!(after["status"]["phase"], "Running");
    assert_eq!(after["metadata"]["labels"]["app"], "y");
}

#[test]
fn no_op_update_keeps_the_resource_version() {
    let (store, pods, _) = setup(100);
    let p = store.create(&pods, "default", pod("a")).unwrap();
    let again = store
        .update(&pods, "default", "a", (*p).clone(), false)
        .unwrap();
    assert_eq!(rv_of(&p), rv_of(&again));
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let (store, _, cms) = setup(100);
    store
        .create(
            &cms,
            "default",
            json!({"metadata": {"name": "c", "finalizers": ["x/y"]}}),
        )
        .unwrap();
    let marked = store
        .delete(&cms, "default", "c", &DeleteOptions::default())
        .unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(store.get(&cms, "default", "c").is_ok());
    store
        .update_with(&cms, "default", "c", false, |cur| {
            let mut n = cur.clone();
            n["metadata"]["finalizers"] = json!([]);
            Ok(n)
        })
        .unwrap();
    assert_eq!(store.get(&cms, "default", "c").unwrap_err().code, 404);
}

#[test]
fn deleting_an_owner_collects_its_dependents_unless_orphaned() {
    let (store, pods, cms) = setup(100);
    let owner = store
        .create(&cms, "default", json!({"metadata": {"name": "owner"}}))
        .unwrap();
    let mut p = pod("child");
    p["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid_of(&owner)}]);
    store.create(&pods, "default", p.clone()).unwrap();
    store
        .delete(&cms, "default", "owner", &DeleteOptions::default())
        .unwrap();
    assert_eq!(store.get(&pods, "default", "child").unwrap_err().code, 404);

    let owner = store
        .create(&cms, "default", json!({"metadata": {"name": "owner"}}))
        .unwrap();
    p["metadata"]["ownerReferences"][0]["uid"] = json!(uid_of(&owner));
    store.create(&pods, "default", p).unwrap();
    let opts = DeleteOptions {
        propagation: Propagation::Orphan,
        ..Default::default()
    };
    store.delete(&cms, "default", "owner", &opts).unwrap();
    let child = store.get(&pods, "default", "child").unwrap();
    assert_eq!(child["metadata"]["ownerReferences"], json!([]));
}

#[test]
fn history_is_ordered_and_old_versions_expire() {
    let (store, _, cms) = setup(3);
    let start = store.current_rv();
    for i in 0..5 {
        store
            .create(
                &cms,
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .unwrap();
    }
    let e = store.events_since(&cms.gr(), start).unwrap_err();
    assert_eq!((e.code, e.reason), (410, "Expired"));
    let (events, _) = store.events_since(&cms.gr(), start + 2).unwrap();
    let names: Vec<_> = events
        .iter()
        .map(|e| name_of(&e.object).to_string())
        .collect();
    assert_eq!(names, ["c2", "c3", "c4"]);
    assert!(events.windows(2).all(|w| w[0].rv < w[1].rv));
}

#[test]
fn paged_lists_cover_everything_once_at_one_resource_version() {
    let (store, pods, _) = setup(1000);
    for i in 0..7 {
        store
            .create(&pods, "default", pod(&format!("p{i}")))
            .unwrap();
    }
    let (l, f) = (LabelSelector::default(), FieldSelector::default());
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut rvs = HashSet::new();
    loop {
        let r = store
            .list(&pods, Some("default"), &l, &f, Some(3), token.as_deref())
            .unwrap();
        names.extend(r.items.iter().map(|o| name_of(o).to_string()));
        rvs.insert(r.resource_version);
        // A write between pages must not change the snapshot's resourceVersion.
        store
            .create(&pods, "default", pod(&format!("z{}", names.len())))
            .unwrap();
        match r.continue_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(rvs.len(), 1);
    assert!(names.starts_with(&["p0", "p1", "p2", "p3", "p4", "p5", "p6"].map(String::from)));
}

#[test]
fn invalid_names_and_labels_are_refused() {
    let (store, pods, _) = setup(10);
    let e = store
        .create(&pods, "default", json!({"metadata": {"name": "Bad_Name"}}))
        .unwrap_err();
    assert_eq!(e.code, 422);
    let e = store
        .create(
            &pods,
            "default",
            json!({"metadata": {"name": "ok", "labels": {"bad key": "v"}}}),
        )
        .unwrap_err();
    assert_eq!(e.code, 422);
    assert_eq!(store.count(&pods.gr()), 0);
}

#[test]
fn dependents_come_from_the_owner_index() {
    let (store, pods, cms) = setup(100);
    let owner = store
        .create(&cms, "default", json!({"metadata": {"name": "owner"}}))
        .unwrap();
    for name in ["b", "a"] {
        let mut p = pod(name);
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
            "name": "owner", "uid": uid_of(&owner), "controller": true}]);
        store.create(&pods, "default", p).unwrap();
    }
    store.create(&pods, "default", pod("unrelated")).unwrap();
    let deps = store.dependents(uid_of(&owner), &pods.gr());
    let names: Vec<_> = deps.iter().map(|d| name_of(d)).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(store.dependents(uid_of(&owner), &cms.gr()).is_empty());
    store
        .delete(&pods, "default", "a", &DeleteOptions::default())
        .unwrap();
    assert_eq!(store.dependents(uid_of(&owner), &pods.gr()).len(), 1);
}

/// `kubectl create secret generic --from-literal` and manifests with `stringData` both rely on
/// the server turning `stringData` into `data`; a reader (NMI) only ever sees `data`.
#[test]
fn secret_string_data_is_merged_into_data_and_never_stored() {
    let (store, _, _) = setup(100);
    let secrets = store.registry().get("", "v1", "secrets").unwrap();
    let s = store
        .create(
            &secrets,
            "default",
            json!({"metadata": {"name": "sp"}, "data": {"keep": "a2VlcA==", "clientSecret": "b2xk"},
                   "stringData": {"clientSecret": "s3cret"}}),
        )
        .unwrap();
    assert_eq!(s["data"]["clientSecret"], "czNjcmV0");
    assert_eq!(s["data"]["keep"], "a2VlcA==");
    assert!(s.get("stringData").is_none());
    let s = store
        .update_with(&secrets, "default", "sp", false, |cur| {
            let mut n = cur.clone();
            n["stringData"] = json!({"clientSecret": "new"});
            Ok(n)
        })
        .unwrap();
    assert_eq!(s["data"]["clientSecret"], "bmV3");
    assert!(s.get("stringData").is_none());
    let e = store
        .create(
            &secrets,
            "default",
            json!({"metadata": {"name": "bad"}, "stringData": {"n": 1}}),
        )
        .unwrap_err();
    assert_eq!(e.code, 400);
}
