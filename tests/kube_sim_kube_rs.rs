//! The Kubernetes simulator judged by kube-rs: watcher and reflector semantics (initial list,
//! ordered events, resume after a dropped watch, relist after 410), CRUD edge cases, fault
//! hooks and bad input, each test on its own simulator on port 0.

use std::time::Duration;

use aad_pod_identity::crd::all_crds;
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{reflector, watcher};
use serde_json::json;

async fn sim(config: KubeSimConfig) -> (KubeSimHandle, kube::Client) {
    let h = KubeSim::start(config).await.expect("simulator starts");
    let c = h.client().await.expect("client");
    (h, c)
}

fn quiet() -> KubeSimConfig {
    KubeSimConfig {
        run_cluster: false,
        ..KubeSimConfig::default()
    }
}

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": v}})).unwrap()
}

async fn next_event(
    s: &mut (impl futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin),
) -> watcher::Event<ConfigMap> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            Ok(Some(Ok(e))) => return e,
            Ok(Some(Err(_))) => continue,
            Ok(None) => panic!("watcher ended"),
            Err(_) => panic!("no watcher event within 10s"),
        }
    }
}

fn describe(e: &watcher::Event<ConfigMap>) -> String {
    let name = |o: &ConfigMap| o.metadata.name.clone().unwrap_or_default();
    let v = |o: &ConfigMap| {
        o.data
            .as_ref()
            .and_then(|d| d.get("v").cloned())
            .unwrap_or_default()
    };
    match e {
        watcher::Event::Init => "Init".into(),
        watcher::Event::InitApply(o) => format!("InitApply {}={}", name(o), v(o)),
        watcher::Event::InitDone => "InitDone".into(),
        watcher::Event::Apply(o) => format!("Apply {}={}", name(o), v(o)),
        watcher::Event::Delete(o) => format!("Delete {}", name(o)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lists_then_streams_changes_in_order() {
    let (h, client) = sim(quiet()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("before", "0"))
        .await
        .unwrap();
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(describe(&next_event(&mut w).await));
    }
    assert_eq!(seen, ["Init", "InitApply before=0", "InitDone"]);
    api.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(describe(&next_event(&mut w).await));
    }
    assert_eq!(seen, ["Apply a=1", "Apply b=1", "Apply a=2", "Delete b"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_after_dropped_watches_without_relisting() {
    let (h, client) = sim(quiet()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    assert_eq!(describe(&next_event(&mut w).await), "Init");
    assert_eq!(describe(&next_event(&mut w).await), "InitDone");
    for i in 0..3 {
        h.drop_watches();
        api.create(&PostParams::default(), &cm(&format!("c{i}"), "1"))
            .await
            .unwrap();
        // The next event is the change itself: the watch was resumed from its resourceVersion.
        assert_eq!(describe(&next_event(&mut w).await), format!("Apply c{i}=1"));
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_relists_after_410_and_converges() {
    let (h, client) = sim(KubeSimConfig {
        watch_history: 5,
        ..quiet()
    })
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let (reader, writer) = reflector::store::<ConfigMap>();
    let mut w = reflector(writer, watcher(api.clone(), watcher::Config::default())).boxed();
    assert_eq!(describe(&next_event(&mut w).await), "Init");
    assert_eq!(describe(&next_event(&mut w).await), "InitDone");
    // The watch is dropped while nobody polls; meanwhile history moves far past its version.
    h.drop_watches();
    for i in 0..20 {
        api.create(&PostParams::default(), &cm(&format!("c{i:02}"), "1"))
            .await
            .unwrap();
    }
    // Resuming gets 410 Expired, so the watcher starts over with a fresh list.
    let mut events = Vec::new();
    loop {
        let e = describe(&next_event(&mut w).await);
        let done = e == "InitDone";
        events.push(e);
        if done {
            break;
        }
    }
    assert_eq!(events[0], "Init", "{events:?}");
    assert_eq!(events.len(), 22, "{events:?}");
    assert_eq!(reader.state().len(), 20);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_sends_bookmarks_and_honours_timeout_seconds() {
    let (h, client) = sim(KubeSimConfig {
        bookmark_interval: Duration::from_millis(200),
        ..quiet()
    })
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = api
        .create(&PostParams::default(), &cm("x", "1"))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    let wp = WatchParams::default().timeout(2);
    assert!(wp.bookmarks, "kube-rs asks for bookmarks by default");
    let start = std::time::Instant::now();
    let events: Vec<_> = api
        .watch(&wp, &rv)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "ended before timeoutSeconds"
    );
    assert!(
        events.iter().any(|e| matches!(e, WatchEvent::Bookmark(_))),
        "{events:?}"
    );
    // A version older than the history answers 410 Expired as an ERROR event.
    let (h2, client2) = sim(KubeSimConfig {
        watch_history: 1,
        ..quiet()
    })
    .await;
    let api2: Api<ConfigMap> = Api::namespaced(client2, "default");
    let first = api2
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    api2.create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    api2.create(&PostParams::default(), &cm("c", "1"))
        .await
        .unwrap();
    let old = first.metadata.resource_version.unwrap();
    let events: Vec<_> = api2
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    match &events[..] {
        [WatchEvent::Error(e)] => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }
    h.shutdown().await;
    h2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_semantics_match_a_real_api_server() {
    let (h, client) = sim(quiet()).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // generateName
    let mut g = cm("", "1");
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let a = api.create(&PostParams::default(), &g).await.unwrap();
    let b = api.create(&PostParams::default(), &g).await.unwrap();
    assert!(a.metadata.name.as_ref().unwrap().starts_with("gen-"));
    assert_ne!(a.metadata.name, b.metadata.name);
    // 409 AlreadyExists, then 409 Conflict on a stale resourceVersion
    let name = a.metadata.name.clone().unwrap();
    let mut dup = cm(&name, "1");
    dup.metadata.name = Some(name.clone());
    let e = api.create(&PostParams::default(), &dup).await.unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{e:?}"
    );
    let mut stale = a.clone();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    stale.data = Some([("v".to_string(), "3".to_string())].into());
    let e = api
        .replace(&name, &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{e:?}"
    );
    assert_eq!(api.get(&name).await.unwrap().data.unwrap()["v"], "2");
    // JSON patch and strategic merge patch
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/data/w", "value": "x"}])).unwrap();
    api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"metadata": {"labels": {"k": "v"}}})),
    )
    .await
    .unwrap();
    let got = api.get(&name).await.unwrap();
    assert_eq!(got.data.unwrap()["w"], "x");
    assert_eq!(got.metadata.labels.unwrap()["k"], "v");
    // label and field selectors
    let lp = ListParams::default().labels("k=v");
    assert_eq!(api.list(&lp).await.unwrap().items.len(), 1);
    let lp = ListParams::default().labels("k notin (v)");
    assert_eq!(api.list(&lp).await.unwrap().items.len(), 1);
    let lp = ListParams::default().fields(&format!("metadata.name={name}"));
    assert_eq!(api.list(&lp).await.unwrap().items.len(), 1);
    // finalizers hold a delete until removed
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
    )
    .await
    .unwrap();
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    let held = api.get(&name).await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let e = api.get(&name).await.unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 404 && s.reason == "NotFound"),
        "{e:?}"
    );
    // server-side apply (approximated as create-or-merge)
    let ssa = PatchParams::apply("kube-sim-test");
    let desired = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}});
    api.patch("ssa", &ssa, &Patch::Apply(&desired))
        .await
        .unwrap();
    let desired = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "2"}});
    let applied = api
        .patch("ssa", &ssa, &Patch::Apply(&desired))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["a"], "2");
    api.delete("ssa", &DeleteParams::default()).await.unwrap();
    // paged list
    for i in 0..7 {
        api.create(&PostParams::default(), &cm(&format!("p{i}"), "1"))
            .await
            .unwrap();
    }
    let first = api.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let token = first.metadata.continue_.clone().unwrap();
    let second = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(second.items.len(), 3);
    assert_eq!(
        first.metadata.resource_version,
        second.metadata.resource_version
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_served_with_a_status_subresource() {
    let (h, client) = sim(quiet()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for f in all_crds() {
        crds.create(&PostParams::default(), &f.crd).await.unwrap();
    }
    let ar = kube::discovery::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("aadpodidentity.k8s.io", "v1", "AzureAssignedIdentity"),
        "azureassignedidentities",
    );
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let obj: kube::core::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
        "metadata": {"name": "demo-default-az-id-1"},
        "spec": {"pod": "demo", "podNamespace": "default", "nodename": "n"},
        "status": {"status": "Assigned"}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    // Status is not written through the main endpoint…
    assert!(created.data.get("status").is_none());
    api.patch(
        "demo-default-az-id-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"status": "Assigned"}})),
    )
    .await
    .unwrap();
    assert!(
        api.get("demo-default-az-id-1")
            .await
            .unwrap()
            .data
            .get("status")
            .is_none()
    );
    // …only through /status, which in turn leaves spec alone.
    api.patch_status(
        "demo-default-az-id-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"status": "Created"}, "spec": {"pod": "other"}})),
    )
    .await
    .unwrap();
    let got = api.get("demo-default-az-id-1").await.unwrap();
    assert_eq!(got.data["status"]["status"], "Created");
    assert_eq!(got.data["spec"]["pod"], "demo");
    // Discovery lists the new resources, so kube's discovery finds them too.
    let d = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(d.groups().any(|g| g.name() == "aadpodidentity.k8s.io"));
    // Deleting the CRD stops serving its resources.
    crds.delete(
        "azureassignedidentities.aadpodidentity.k8s.io",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    let e = api.get("demo-default-az-id-1").await.unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 404),
        "{e:?}"
    );
    h.shutdown().await;
}

async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    ct: &str,
    body: Vec<u8>,
) -> Result<serde_json::Value, kube::Error> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(body)
        .unwrap();
    client.request::<serde_json::Value>(req).await
}

fn status_of(r: Result<serde_json::Value, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_status_and_changes_nothing() {
    let (h, client) = sim(KubeSimConfig {
        max_body_bytes: 64 * 1024,
        ..quiet()
    })
    .await;
    let path = "/api/v1/namespaces/default/configmaps";
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            "application/json",
            b"{\"metadata\": {\"name\": \"x\"".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            "application/json",
            b"[1,2]".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            "application/yaml",
            b"metadata: [unclosed".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            "application/json",
            br#"{"kind":"Pod","metadata":{"name":"x"}}"#.to_vec(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            "application/json",
            br#"{"metadata":{"name":"Bad_Name"}}"#.to_vec(),
            422,
            "Invalid",
        ),
        (
            "POST",
            "application/json",
            br#"{"metadata":{"name":"ok","labels":{"bad key":"v"}}}"#.to_vec(),
            422,
            "Invalid",
        ),
        (
            "POST",
            "application/json",
            vec![b' '; 100 * 1024],
            413,
            "RequestEntityTooLarge",
        ),
    ];
    for (method, ct, body, code, reason) in cases {
        let got = status_of(raw(&client, method, path, ct, body).await);
        assert_eq!(got, (code, reason.to_string()), "{method} {ct}");
    }
    let got = status_of(
        raw(
            &client,
            "GET",
            "/api/v1/namespaces/default/widgets",
            "application/json",
            vec![],
        )
        .await,
    );
    assert_eq!(got, (404, "NotFound".into()));
    let got = status_of(
        raw(
            &client,
            "GET",
            &format!("{path}?labelSelector=a%20in%20b"),
            "application/json",
            vec![],
        )
        .await,
    );
    assert_eq!(got, (400, "BadRequest".into()));
    let got = status_of(
        raw(
            &client,
            "POST",
            "/api/v1/namespaces/nowhere/configmaps",
            "application/json",
            br#"{"metadata":{"name":"x"}}"#.to_vec(),
        )
        .await,
    );
    assert_eq!(got, (404, "NotFound".into()));
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("keep", "1"))
        .await
        .unwrap();
    let got = status_of(
        raw(
            &client,
            "PATCH",
            &format!("{path}/keep"),
            "application/merge-patch+json",
            b"{not json".to_vec(),
        )
        .await,
    );
    assert_eq!(got, (400, "BadRequest".into()));
    let got = status_of(
        raw(
            &client,
            "PATCH",
            &format!("{path}/keep"),
            "text/plain",
            b"{}".to_vec(),
        )
        .await,
    );
    assert_eq!(got, (415, "UnsupportedMediaType".into()));
    // Nothing but the one good object exists, unchanged.
    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 1);
    assert_eq!(all.items[0].data.as_ref().unwrap()["v"], "1");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_hooks_fail_requests_and_add_latency() {
    let (h, client) = sim(quiet()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    h.fail_next(2, 500);
    for _ in 0..2 {
        let e = api.list(&ListParams::default()).await.unwrap_err();
        assert!(
            matches!(e, kube::Error::Api(ref s) if s.code == 500 && s.reason == "InternalError"),
            "{e:?}"
        );
    }
    api.list(&ListParams::default()).await.unwrap();
    h.fail_next(1, 410);
    let e = api.get("x").await.unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 410 && s.reason == "Expired"),
        "{e:?}"
    );
    // kube-rs retries 429 (the simulator sends Retry-After: 1), so the call still succeeds.
    h.fail_next(1, 429);
    let start = std::time::Instant::now();
    api.list(&ListParams::default()).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "the 429 was not answered"
    );
    h.set_latency(Duration::from_millis(300));
    let start = std::time::Instant::now();
    api.list(&ListParams::default()).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    h.set_latency(Duration::ZERO);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_come_from_the_topology_and_pods_get_distinct_loopback_ips() {
    let topology = aad_pod_identity_sim::topology::Topology::sized(1, 3, 1, 1);
    let (h, client) = sim(KubeSimConfig {
        topology: topology.clone(),
        ..KubeSimConfig::default()
    })
    .await;
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await.unwrap();
    let want: Vec<_> = topology
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.provider_id.clone()))
        .collect();
    let got: Vec<_> = list
        .items
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap(),
                n.spec.as_ref().unwrap().provider_id.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), 4);
    for w in &want {
        assert!(got.contains(w), "{w:?} missing");
    }
    let pods: Api<Pod> = Api::namespaced(client, "default");
    for i in 0..8 {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": format!("p{i}")},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let running = kube::runtime::wait::await_condition(
        pods.clone(),
        "p7",
        kube::runtime::conditions::is_pod_running(),
    );
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    let mut ips = std::collections::HashSet::new();
    let mut per_node = std::collections::HashMap::<String, usize>::new();
    for i in 0..8 {
        let name = format!("p{i}");
        let running = kube::runtime::wait::await_condition(
            pods.clone(),
            &name,
            kube::runtime::conditions::is_pod_running(),
        );
        let p = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let st = p.status.unwrap();
        let ip: std::net::Ipv4Addr = st.pod_ip.unwrap().parse().unwrap();
        assert_eq!(ip.octets()[0], 127);
        assert!(ips.insert(ip), "duplicate pod IP {ip}");
        assert!(st.host_ip.unwrap().starts_with("127."));
        *per_node
            .entry(p.spec.unwrap().node_name.unwrap())
            .or_default() += 1;
    }
    // Least-loaded placement spreads 8 pods over 4 nodes evenly.
    assert!(per_node.values().all(|n| *n == 2), "{per_node:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_never_take_the_server_down() {
    let (h, client) = sim(quiet()).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("keep", "1"))
        .await
        .unwrap();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let requests: Vec<(&str, String, &str, Vec<u8>)> = vec![
        (
            "GET",
            "/api/v1/namespaces//configmaps".into(),
            "application/json",
            vec![],
        ),
        ("GET", "/apis/".into(), "application/json", vec![]),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps/keep/nonsense/deeper".into(),
            "application/json",
            vec![],
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=abc".into(),
            "application/json",
            vec![],
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?limit=-1".into(),
            "application/json",
            vec![],
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?continue=%%%".into(),
            "application/json",
            vec![],
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps".into(),
            "application/json",
            deep.into_bytes(),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps".into(),
            "application/yaml",
            b"a: &a [*a, *a]\nb: *a\n".to_vec(),
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/keep".into(),
            "application/merge-patch+json",
            br#"{"metadata":{"name":"other"}}"#.to_vec(),
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/keep".into(),
            "application/merge-patch+json",
            br#"{"metadata":{"labels":"not a map"}}"#.to_vec(),
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/configmaps/keep".into(),
            "application/json",
            br#"{"metadata":{"name":"keep","resourceVersion":"1"}}"#.to_vec(),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default/configmaps/keep".into(),
            "application/json",
            b"{bad".to_vec(),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps/keep".into(),
            "application/json",
            b"{}".to_vec(),
        ),
    ];
    for (method, path, ct, body) in requests {
        let req = http::Request::builder()
            .method(method)
            .uri(&path)
            .header("content-type", ct)
            .body(body)
            .unwrap();
        match client.request_text(req).await {
            Err(kube::Error::Api(s)) => {
                assert!((400..500).contains(&s.code), "{method} {path}: {s:?}")
            }
            Ok(text) if method == "GET" => {
                // A watch that cannot start reports its error in the stream or ends empty.
                assert!(
                    !text.contains("\"type\":\"ADDED\""),
                    "{method} {path}: {text}"
                );
            }
            other => panic!("{method} {path}: expected a 4xx Status, got {other:?}"),
        }
    }
    // A watch with an absurd timeout starts (the deadline is capped) instead of panicking.
    let req = http::Request::get(
        "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=18446744073709551615",
    )
    .body(Vec::new())
    .unwrap();
    drop(client.request_stream(req).await.unwrap());
    // Still serving, and the object is untouched.
    let keep = api.get("keep").await.unwrap();
    assert_eq!(keep.data.unwrap()["v"], "1");
    assert_eq!(keep.metadata.name.as_deref(), Some("keep"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watchers_get_initial_events_then_changes() {
    let (h, client) = sim(quiet()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    // sendInitialEvents=true: the initial state comes as ADDED events closed by a bookmark.
    let mut w = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(describe(&next_event(&mut w).await));
    }
    assert_eq!(seen, ["Init", "InitApply a=1", "InitApply b=1", "InitDone"]);
    api.create(&PostParams::default(), &cm("c", "1"))
        .await
        .unwrap();
    assert_eq!(describe(&next_event(&mut w).await), "Apply c=1");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_watches_see_objects_enter_and_leave_the_selection() {
    let (h, client) = sim(quiet()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let cfg = watcher::Config::default().labels("aadpodidbinding=sel");
    let mut w = watcher(api.clone(), cfg).boxed();
    assert_eq!(describe(&next_event(&mut w).await), "Init");
    assert_eq!(describe(&next_event(&mut w).await), "InitDone");
    api.create(&PostParams::default(), &cm("x", "1"))
        .await
        .unwrap();
    let label =
        |v: Option<&str>| Patch::Merge(json!({"metadata": {"labels": {"aadpodidbinding": v}}}));
    api.patch("x", &PatchParams::default(), &label(Some("sel")))
        .await
        .unwrap();
    assert_eq!(describe(&next_event(&mut w).await), "Apply x=1");
    api.patch("x", &PatchParams::default(), &label(Some("other")))
        .await
        .unwrap();
    assert_eq!(describe(&next_event(&mut w).await), "Delete x");
    api.patch("x", &PatchParams::default(), &label(None))
        .await
        .unwrap();
    api.patch("x", &PatchParams::default(), &label(Some("sel")))
        .await
        .unwrap();
    assert_eq!(describe(&next_event(&mut w).await), "Apply x=1");
    // Close the client's watch first: graceful shutdown waits for open connections.
    drop(w);
    h.shutdown().await;
}
