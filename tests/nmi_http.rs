//! NMI's HTTP surface over real loopback HTTP: every status and body of REFERENCE.md.
//! "Pods" are loopback source addresses; the indexes are fed the way the watch loops feed them.

mod nmi_support;

use aad_pod_identity::crd::{AssignedState, IdentityType};
use aad_pod_identity::object_key::ObjectKey;
use nmi_support::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
const METADATA_400: &str = "{\"error\":\"invalid_request\",\"error_description\":\"Required metadata header not specified\"}\n";

/// NMI with pod `ns/p` at 127.0.0.2 bound to identities `id-a` (client `ca`) and `id-b` (`cb`),
/// pod `ns/q` at 127.0.0.3 bound to `id-q` (`cq`), both Assigned.
fn world(settings_fn: impl FnOnce(&mut aad_pod_identity::nmi::NmiSettings)) -> Served {
    let meta = start_metadata_standin();
    let mut s = settings(meta);
    settings_fn(&mut s);
    let served = serve(&s, FakeSource::new(Duration::from_millis(5)));
    let n = &served.nmi;
    n.pods.apply(&pod("ns", "p", "127.0.0.2"));
    n.pods.apply(&pod("ns", "q", "127.0.0.3"));
    let a = n.assignments.as_ref().unwrap();
    for (pod_name, name, cid) in [
        ("p", "id-a", "ca"),
        ("p", "id-b", "cb"),
        ("q", "id-q", "cq"),
    ] {
        a.apply(&assigned(
            "ns",
            pod_name,
            &identity("ns", name, cid, IdentityType::UserAssignedMsi),
            AssignedState::Assigned,
        ));
    }
    served
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    metadata: bool,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client.get(url);
    if metadata {
        req = req.header("Metadata", "true");
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// Sends raw bytes (paths reqwest would normalize) and returns the status line and body.
async fn raw(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.lines().next().unwrap_or("").to_string();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_pod_gets_the_metadata_service_token_json() {
    let w = world(|_| {});
    let c = client_from("127.0.0.2");
    for version in ["2018-02-01", "2019-08-01"] {
        let url = format!(
            "{}{TOKEN_PATH}?api-version={version}&resource=https%3A%2F%2Fvault.azure.net",
            w.base
        );
        let (status, headers, body) = get(&c, &url, true).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = [
            "access_token",
            "refresh_token",
            "expires_in",
            "expires_on",
            "not_before",
            "resource",
            "token_type",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected);
        for k in keys {
            assert!(v[k].is_string(), "{k} must be a string: {body}");
        }
        assert_eq!(v["resource"], "https://vault.azure.net");
        assert_eq!(v["token_type"], "Bearer");
        // Nothing named: the first identity by name, id-a.
        assert_eq!(v["access_token"], jwt_for("ca"));
        let left: u64 = v["expires_in"].as_str().unwrap().parse().unwrap();
        assert!((86_000..=86_399).contains(&left));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_selector_sdks_send_is_honoured() {
    let w = world(|_| {});
    let c = client_from("127.0.0.2");
    let rid_b = "%2Fsubscriptions%2Fsub%2Fresourcegroups%2Frg%2Fproviders%2FMicrosoft.ManagedIdentity%2FuserAssignedIdentities%2Fid-b";
    for (query, expect) in [
        ("client_id=cb".to_string(), "cb"),
        ("client_id=CA".to_string(), "ca"),
        (format!("msi_res_id={rid_b}"), "cb"),
        (format!("mi_res_id={rid_b}"), "cb"),
        ("object_id=oid-cb".to_string(), "cb"),
    ] {
        let url = format!(
            "{}{TOKEN_PATH}/?api-version=2019-08-01&resource=r&{query}",
            w.base
        );
        let (status, _, body) = get(&c, &url, true).await;
        assert_eq!(status, 200, "{query}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["access_token"], jwt_for(expect), "{query}");
    }
    // "metadata" is case-insensitive.
    let url = format!("{}/METADATA/identity/oauth2/token?resource=r", w.base);
    assert_eq!(get(&c, &url, true).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_metadata_header_gets_the_originals_400() {
    let w = world(|_| {});
    let c = client_from("127.0.0.2");
    let (status, headers, body) =
        get(&c, &format!("{}{TOKEN_PATH}?resource=r", w.base), false).await;
    assert_eq!(status, 400);
    assert_eq!(body, METADATA_400);
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    // The pass-through has the same rule.
    let (status, _, body) = get(&c, &format!("{}/metadata/other", w.base), false).await;
    assert_eq!((status, body.as_str()), (400, METADATA_400));
    assert_eq!(w.source.calls(), 0);

    let relaxed = world(|s| s.metadata_header_required = false);
    let (status, _, _) = get(
        &client_from("127.0.0.2"),
        &format!("{}{TOKEN_PATH}?resource=r", relaxed.base),
        false,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_resource_and_malformed_token_paths_get_400() {
    let w = world(|_| {});
    let c = client_from("127.0.0.2");
    let (status, _, body) = get(
        &c,
        &format!("{}{TOKEN_PATH}?api-version=2018-02-01", w.base),
        true,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (400, "parameter resource cannot be empty\n")
    );
    for path in [
        r"/metadata/identity\oauth2/token/?resource=r",
        r"/metadata/identity/oauth2\token?resource=r",
        r"/metadata/identity\\\oauth2\\token/?resource=r",
        r"/metadata/identity%5Coauth2%5Ctoken?resource=r",
    ] {
        let (status, body) = raw(w.addr, path).await;
        assert!(status.contains(" 400 "), "{path}: {status}");
        assert_eq!(body, "Invalid request\n", "{path}");
    }
    assert_eq!(w.source.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_callers_and_unbound_identities_get_404_or_503_with_retry_after() {
    let w = world(|_| {});
    let started = Instant::now();
    let (status, _, body) = get(
        &client_from("127.0.0.9"),
        &format!("{}{TOKEN_PATH}?resource=r", w.base),
        true,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no pod found with IP 127.0.0.9"), "{body}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    // p asks for q's identity: refused, never fetched.
    let (status, _, body) = get(
        &client_from("127.0.0.2"),
        &format!("{}{TOKEN_PATH}?resource=r&client_id=cq", w.base),
        true,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("client id cq"), "{body}");
    assert_eq!(w.source.calls(), 0);

    let retry = world(|s| s.set_retry_after_header = true);
    let (status, headers, _) = get(
        &client_from("127.0.0.2"),
        &format!("{}{TOKEN_PATH}?resource=r&client_id=cq", retry.base),
        true,
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "20");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_get_403_and_an_unreachable_service_503() {
    let w = world(|_| {});
    let a = w.nmi.assignments.as_ref().unwrap();
    for (name, cid) in [("id-r", "refused"), ("id-d", "down")] {
        a.apply(&assigned(
            "ns",
            "p",
            &identity("ns", name, cid, IdentityType::UserAssignedMsi),
            AssignedState::Assigned,
        ));
    }
    let c = client_from("127.0.0.2");
    let (status, headers, body) = get(
        &c,
        &format!("{}{TOKEN_PATH}?resource=r&client_id=refused", w.base),
        true,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(body.contains("Identity not found"), "{body}");
    let (status, _, _) = get(
        &c,
        &format!("{}{TOKEN_PATH}?resource=r&client_id=down", w.base),
        true,
    )
    .await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_token_serves_named_pods_to_localhost_only() {
    let w = world(|_| {});
    let url = format!(
        "{}/host/token/?resource=https%3A%2F%2Fmanagement.azure.com%2F",
        w.base
    );
    let local = client_from("127.0.0.1");
    let resp = local
        .get(&url)
        .header("podns", "ns")
        .header("podname", "q")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["clientid"], "cq");
    assert_eq!(v["token"]["access_token"], jwt_for("cq"));
    assert_eq!(v["token"]["resource"], "https://management.azure.com/");

    let (status, _, body) = get(&local, &url, false).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "missing 'podname' and 'podns' from request header\n")
    );
    let resp = client_from("127.0.0.2")
        .get(&url)
        .header("podns", "ns")
        .header("podname", "q")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.text().await.unwrap(),
        "request remote address is not from a host\n"
    );
    let resp = local
        .get(format!("{}/host/token", w.base))
        .header("podns", "ns")
        .header("podname", "q")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = local
        .get(&url)
        .header("podns", "ns")
        .header("podname", "nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_metadata_is_blocked_on_request_and_everything_else_passes_through() {
    let open = world(|_| {});
    let c = client_from("127.0.0.2");
    let (status, _, body) = get(&c, &format!("{}/metadata/instance", open.base), true).await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"compute":{"name":"standin"}}"#);

    let resp = c
        .post(format!(
            "{}/metadata/scheduledevents?api-version=2020-07-01&x=%2F",
            open.base
        ))
        .header("Metadata", "true")
        .header("X-Custom", "abc")
        .body("payload-bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 207);
    assert_eq!(resp.headers()["x-standin"], "yes");
    let echo: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(
        echo["uri"],
        "/metadata/scheduledevents?api-version=2020-07-01&x=%2F"
    );
    assert_eq!(echo["body"], "payload-bytes");
    let headers = echo["headers"].as_array().unwrap();
    assert!(
        headers.contains(&serde_json::json!(["x-custom", "abc"])),
        "{headers:?}"
    );
    assert!(
        headers.contains(&serde_json::json!(["metadata", "true"])),
        "{headers:?}"
    );

    let too_big = c
        .post(format!("{}/metadata/upload", open.base))
        .header("Metadata", "true")
        .body(vec![b'x'; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status().as_u16(), 413);

    let blocked = world(|s| s.block_instance_metadata = true);
    for path in [
        "/metadata/instance",
        "/Metadata/instance/compute?api-version=2021-01-01",
    ] {
        let (status, _, body) = get(&c, &format!("{}{path}", blocked.base), true).await;
        assert_eq!(
            (status, body.as_str()),
            (403, "Request blocked by AAD Pod Identity NMI\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_to_a_dead_metadata_service_is_a_500() {
    let mut s = settings("127.0.0.1:9".parse().unwrap());
    s.token_fetch_timeout = Duration::from_secs(2);
    let w = serve(&s, FakeSource::new(Duration::ZERO));
    let (status, _, body) = get(
        &client_from("127.0.0.2"),
        &format!("{}/metadata/x", w.base),
        true,
    )
    .await;
    assert_eq!(status, 500, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_is_answered_as_soon_as_the_identity_is_assigned() {
    let w = world(|s| s.assignment_wait = Duration::from_secs(30));
    let n = &w.nmi;
    n.pods.apply(&pod("ns", "new", "127.0.0.4"));
    let id = identity("ns", "id-new", "cnew", IdentityType::UserAssignedMsi);
    let a = n.assignments.as_ref().unwrap();
    a.apply(&assigned("ns", "new", &id, AssignedState::Created));
    let url = format!("{}{TOKEN_PATH}?resource=r", w.base);
    let req = tokio::spawn(async move { get(&client_from("127.0.0.4"), &url, true).await });
    while a.waiters(&ObjectKey::new("ns", "new")) == 0 {
        tokio::task::yield_now().await;
    }
    let flipped = Instant::now();
    a.apply(&assigned("ns", "new", &id, AssignedState::Assigned));
    let (status, _, body) = req.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(flipped.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_from_a_hundred_pods_cause_one_upstream_fetch() {
    let meta = start_metadata_standin();
    let s = settings(meta);
    let w = serve(&s, FakeSource::new(Duration::from_millis(50)));
    let shared = identity("ns", "shared", "cshared", IdentityType::UserAssignedMsi);
    let a = w.nmi.assignments.as_ref().unwrap();
    for i in 0..100 {
        let name = format!("p{i}");
        w.nmi
            .pods
            .apply(&pod("ns", &name, &format!("127.0.3.{}", i + 1)));
        a.apply(&assigned("ns", &name, &shared, AssignedState::Assigned));
    }
    let url = format!(
        "{}{TOKEN_PATH}?resource=https%3A%2F%2Fstorage.azure.com%2F",
        w.base
    );
    let clients: Vec<reqwest::Client> = (0..100)
        .map(|i| client_from(&format!("127.0.3.{}", i + 1)))
        .collect();
    let mut tasks = Vec::new();
    for n in 0..1000 {
        let c = clients[n % 100].clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move { get(&c, &url, true).await }));
    }
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        bodies.insert(v["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(bodies.len(), 1);
    assert_eq!(w.source.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_active_only_once_caches_are_synced_and_metrics_are_served() {
    let w = world(|_| {});
    let probe = reqwest::Client::new();
    let healthz = format!("http://{}/healthz", w.probe);
    let readyz = format!("http://{}/readyz", w.probe);
    let r = probe.get(&healthz).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Not Active");
    assert_eq!(probe.get(&readyz).send().await.unwrap().status(), 503);
    w.nmi.pods.replace_all(&[pod("ns", "p", "127.0.0.2")]);
    w.nmi.exceptions.replace_all(&[]);
    assert_eq!(
        probe
            .get(&healthz)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "Not Active"
    );
    w.nmi.assignments.as_ref().unwrap().replace_all(&[]);
    let r = probe.get(&healthz).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "Active");
    assert_eq!(probe.get(&readyz).send().await.unwrap().status(), 200);
    w.nmi
        .iptables_ready
        .store(false, std::sync::atomic::Ordering::Release);
    assert_eq!(
        probe
            .get(&healthz)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "Not Active"
    );

    // One request, then the metrics show it.
    w.nmi.assignments.as_ref().unwrap().apply(&assigned(
        "ns",
        "p",
        &identity("ns", "id-a", "ca", IdentityType::UserAssignedMsi),
        AssignedState::Assigned,
    ));
    let (status, _, _) = get(
        &client_from("127.0.0.2"),
        &format!("{}{TOKEN_PATH}?resource=r", w.base),
        true,
    )
    .await;
    assert_eq!(status, 200);
    let text = probe
        .get(format!("http://{}/metrics", w.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "aadpodidentity_nmi_operations_duration_seconds_count{namespace=\"ns\",operation_type=\"/metadata/identity/oauth2/token\",resource=\"other\",status_code=\"200\"} 1",
        "aadpodidentity_nmi_token_cache_lookups_total{node=\"node-1\",result=\"miss\"} 1",
        "aadpodidentity_nmi_token_request_duration_seconds_count{node=\"node-1\",result=\"ok\"} 1",
        "aadpodidentity_nmi_upstream_token_fetch_duration_seconds_count{node=\"node-1\",result=\"ok\"} 1",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert!(
        !text.contains(&jwt_for("ca")),
        "a token leaked into metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_500_naming_the_task_once_a_supervised_task_is_dead() {
    let w = world(|_| {});
    let healthz = format!("http://{}/healthz", w.probe);
    let r = reqwest::get(&healthz).await.unwrap();
    assert_eq!(r.status(), 200);
    // A task that cannot be restarted ends: NMI is dead and says so.
    w.nmi.supervisor.spawn_once("http-token", async {});
    let death = w.nmi.supervisor.died().await;
    assert_eq!(death.task, "http-token");
    let r = reqwest::get(&healthz).await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.text().await.unwrap(),
        "Not Active: task http-token died: it returned"
    );
    let r = reqwest::get(format!("http://{}/readyz", w.probe))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}
