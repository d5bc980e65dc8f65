//! NMI tried as a hostile pod would, over real HTTP, with the Azure simulator's metadata service
//! behind it (the pass-through target, and the token source for bound pods). The node's scale
//! set holds `identity-0` and `identity-1`, so any request that slipped through to the metadata
//! service as a token request would come back with a real token: the tests would see it.
//!
//! - the path tricks of the pass-through bypass (and their relatives) give an unbound pod no
//!   token, and `--block-instance-metadata` holds under the same tricks;
//! - property: the route NMI chose is the route the metadata service receives (its request
//!   log records every path as it arrived);
//! - hostile requests cannot grow `/metrics` (bounded labels);
//! - the bounds on what a client can hold (connections per address, relayed requests, body
//!   time) answer at once, and a bound pod's answer is not delayed by them;
//! - a fuzzed suite of request lines, headers, paths and queries from bound, unbound and unknown
//!   addresses: no panic, no token to an unbound pod, no token for an identity not bound to the
//!   asking pod.

mod nmi_support;

use aad_pod_identity::crd::{AssignedState, IdentityType};
use aad_pod_identity::http::request::{Route, classify, normalize};
use aad_pod_identity::metrics::Metrics;
use aad_pod_identity::nmi::{Nmi, NmiSettings};
use aad_pod_identity_sim::azure::{AzureSim, AzureSimConfig, AzureSimHandle, Latency};
use aad_pod_identity_sim::topology::Topology;
use nmi_support::{assigned, client_from, eventually, identity, pod};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The bound pod (`ns/bound`, identity-0), the unbound pod (`ns/unbound`) and an address no pod has.
const BOUND: &str = "127.0.13.2";
const UNBOUND: &str = "127.0.13.3";
const UNKNOWN: &str = "127.0.13.9";

struct World {
    azure: AzureSimHandle,
    node: String,
    nmi: Arc<Nmi>,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    /// Client ids of identity-0 (bound to `ns/bound`) and identity-1 (bound to nobody).
    bound_id: String,
    other_id: String,
    /// Every selector of both identities (client, resource and object ids).
    selectors: Vec<String>,
}

async fn world(tune: impl FnOnce(&mut NmiSettings)) -> World {
    let topology = Topology::sized(1, 1, 0, 2);
    let node = topology.nodes()[0].name.clone();
    let azure = AzureSim::start(
        &topology,
        AzureSimConfig {
            preassigned: vec!["identity-0".into(), "identity-1".into()],
            ..AzureSimConfig::default()
        },
    )
    .await
    .unwrap();
    let imds = azure.imds_addr(&node).unwrap();
    let mut s = nmi_support::settings(imds);
    s.node = node.clone();
    s.assignment_wait = Duration::from_millis(50);
    s.pod_arrival_timeout = Duration::from_millis(50);
    s.pass_through_body_timeout = Duration::from_millis(500);
    tune(&mut s);
    // Service principals are not used here: the Kubernetes client is never called.
    let source =
        nmi_support::metadata_only_source(imds, azure.aad_endpoint(), Duration::from_secs(5));
    let metrics = Metrics::new();
    let nmi = Arc::new(Nmi::new(&s, Arc::new(source), &metrics).unwrap());
    let l = TcpListener::bind(s.listen).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        aad_pod_identity::http::nmi::serve(l, Arc::clone(&nmi.http), s.http_workers).unwrap(),
    );
    let ml = TcpListener::bind(s.metrics).unwrap();
    let metrics_addr = ml.local_addr().unwrap();
    tokio::spawn(
        aad_pod_identity::http::probes::serve_metrics(ml, metrics.registry().clone()).unwrap(),
    );

    let ids = azure.identities();
    let id0 = ids.iter().find(|i| i.name == "identity-0").unwrap().clone();
    let id1 = ids.iter().find(|i| i.name == "identity-1").unwrap().clone();
    for (name, ip) in [("bound", BOUND), ("unbound", UNBOUND)] {
        let mut p = pod("ns", name, ip);
        p.spec.as_mut().unwrap().node_name = Some(node.clone());
        nmi.pods.apply(&p);
    }
    let mut id = identity("ns", "id-0", &id0.client_id, IdentityType::UserAssignedMsi);
    id.spec.resource_id = id0.resource_id.clone();
    let mut a = assigned("ns", "bound", &id, AssignedState::Assigned);
    a.spec.node_name = node.clone();
    nmi.assignments.as_ref().unwrap().apply(&a);
    World {
        azure,
        node,
        nmi,
        addr,
        metrics_addr,
        selectors: [&id0, &id1]
            .iter()
            .flat_map(|i| {
                let rid: String =
                    url::form_urlencoded::byte_serialize(i.resource_id.as_bytes()).collect();
                [i.client_id.clone(), rid, i.principal_id.clone()]
            })
            .collect(),
        bound_id: id0.client_id,
        other_id: id1.client_id,
    }
}

impl World {
    /// Requests the node's metadata service received so far.
    fn upstream_paths(&self) -> Vec<(String, String)> {
        self.azure
            .request_log()
            .into_iter()
            .filter(|r| r.node.as_deref() == Some(self.node.as_str()))
            .map(|r| (r.path, r.query))
            .collect()
    }

    /// The client id a token was issued to, if `body` holds one.
    fn token_owner(&self, body: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let tokens: Vec<&serde_json::Value> = match &v {
            serde_json::Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        tokens.iter().find_map(|t| {
            let access = t.get("access_token")?.as_str()?;
            Some(
                self.azure
                    .decode_token(access)
                    .map_or_else(|e| format!("undecodable token: {e}"), |c| c.appid),
            )
        })
    }

    async fn series(&self) -> usize {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count()
    }
}

/// One raw request from `from`; returns (status, body). The request is written as given, so
/// paths no HTTP client would send reach NMI unchanged.
async fn raw(addr: SocketAddr, from: &str, request: &[u8]) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    // Read one response: up to its Content-Length when it has one (a request that promised a
    // body it never sends keeps the connection open), else to the end.
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            let text = skip_interim(&text);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                });
                if len.is_some_and(|len| body.len() >= len) {
                    break;
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let text = skip_interim(&text);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The final response: interim `1xx` responses (`100 Continue`) removed.
fn skip_interim(mut text: &str) -> &str {
    while text.starts_with("HTTP/1.1 1") || text.starts_with("HTTP/1.0 1") {
        match text.split_once("\r\n\r\n") {
            Some((_, rest)) => text = rest,
            None => break,
        }
    }
    text
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// The bypass of the issue and its relatives, each with the token query naming an identity the
/// node's scale set holds.
fn token_tricks(client_id: &str) -> Vec<String> {
    let q = format!(
        "?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id={client_id}"
    );
    [
        "/metadata/identity/oauth2/x/../token",
        "/./metadata/identity/oauth2/token",
        "/x/../metadata/identity/oauth2/token",
        "/metadata/identity/oauth2/%2e%2e/oauth2/token",
        "/metadata/identity/oauth2/%2E%2E/oauth2/token",
        "/metadata/identity/oauth2/.%2e/oauth2/token",
        "/x/%2e%2e/metadata/identity/oauth2/token",
        "//metadata/identity/oauth2/token",
        "/metadata//identity/oauth2/token",
        "/%2Fmetadata%2Fidentity%2Foauth2%2Ftoken",
        "/%6detadata/identity/oauth2/token",
        "/metadata/%69dentity/oauth2/token",
        "/metadata/IDENTITY/OAUTH2/TOKEN",
        "/metadata/identity/oauth2/token/../token",
        "/x/..%2fmetadata/identity/oauth2/token",
        "/x/..%5cmetadata/identity/oauth2/token",
        r"/x\..\metadata\identity\oauth2\token",
        "/metadata/identity/oauth2/token%2f..%2f..%2fidentity/oauth2/token",
    ]
    .iter()
    .map(|p| format!("{p}{q}"))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_tricks_give_an_unbound_pod_no_token() {
    let w = world(|_| {}).await;
    let before = w.upstream_paths().len();
    for target in token_tricks(&w.bound_id)
        .into_iter()
        .chain(token_tricks(&w.other_id))
    {
        for from in [UNBOUND, UNKNOWN] {
            let (status, body) = raw(w.addr, from, &get(&target)).await;
            assert_ne!(status, 200, "{from} {target}: {body}");
            assert_eq!(w.token_owner(&body), None, "{from} {target}: {body}");
            assert!(
                matches!(status, 400 | 404),
                "{from} {target}: {status} {body}"
            );
        }
        // The bound pod asking for an identity that is not its own gets nothing either.
        let (status, body) = raw(w.addr, BOUND, &get(&target)).await;
        if let Some(owner) = w.token_owner(&body) {
            assert_eq!(owner, w.bound_id, "{target}: {body}");
        } else {
            assert!(matches!(status, 400 | 404), "{target}: {status} {body}");
        }
    }
    // None of them reached the metadata service as anything but NMI's own fetch for the bound
    // pod (which goes to the exact token path).
    for (path, _) in &w.upstream_paths()[before..] {
        assert_eq!(path, "/metadata/identity/oauth2/token");
    }
    // The same request spelt plainly is a token request NMI answers itself.
    let (status, _) = raw(
        w.addr,
        UNBOUND,
        &get("/metadata/identity/oauth2/token?resource=r&api-version=2018-02-01"),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_instance_metadata_holds_under_the_same_tricks() {
    let w = world(|s| s.block_instance_metadata = true).await;
    let before = w.upstream_paths().len();
    for path in [
        "/metadata/instance",
        "/x/../metadata/instance",
        "/./metadata/instance",
        "/metadata/x/%2e%2e/instance",
        "/metadata/x/%2E%2E/instance/compute",
        "//metadata//instance",
        "/%6detadata/instance",
        "/%2Fmetadata%2Finstance",
        "/METADATA/INSTANCE",
        "/metadata/%69nstance",
        r"/x\..\metadata\instance",
    ] {
        let target = format!("{path}?api-version=2021-02-01");
        let (status, body) = raw(w.addr, UNBOUND, &get(&target)).await;
        assert!(
            (status == 403 && body == "Request blocked by AAD Pod Identity NMI\n")
                || (status == 400 && body == "Invalid request\n"),
            "{target}: {status} {body}"
        );
    }
    assert_eq!(w.upstream_paths().len(), before, "nothing was relayed");
}

fn piece() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("/"),
        Just("\\"),
        Just("."),
        Just(".."),
        Just("%2e"),
        Just("%2E%2e"),
        Just("%2f"),
        Just("%5C"),
        Just("%25"),
        Just("%20"),
        Just("metadata"),
        Just("Metadata"),
        Just("%6Detadata"),
        Just("identity"),
        Just("oauth2"),
        Just("token"),
        Just("instance"),
        Just("host"),
        Just("scheduledevents"),
        Just("x"),
        Just(";"),
        Just("~"),
    ]
}

/// A real route's path with tricks woven in between its segments: dot segments and their
/// encodings, doubled and encoded separators, backslashes, case changes.
fn woven_path() -> impl Strategy<Value = String> {
    let base = proptest::sample::select(vec![
        "metadata/identity/oauth2/token",
        "metadata/instance/compute",
        "metadata/scheduledevents",
        "host/token",
        "metadata/attested/document",
        "x/y",
    ]);
    // Mostly tricks that resolve to nothing (the route stays), some that change it.
    let trick = proptest::sample::select(vec![
        "",
        "",
        "",
        "",
        "./",
        "x/../",
        "%2e/",
        "x/%2e%2e/",
        "x/%2E%2E/",
        "/",
        "//",
        "%2F",
        ".%2e/x/../",
        "x/.%2E/",
        "%2e%2f",
        r"\",
        r"x\..\",
        "%5c",
        "../",
    ]);
    (base, proptest::collection::vec(trick, 6), any::<bool>()).prop_map(|(base, tricks, upper)| {
        let base = if upper {
            base.to_uppercase()
        } else {
            base.to_string()
        };
        let mut out = String::from("/");
        for (i, seg) in base.split('/').enumerate() {
            out.push_str(tricks[i % tricks.len()]);
            out.push_str(seg);
            out.push('/');
        }
        out.pop();
        out
    })
}

#[test]
fn the_route_nmi_chooses_is_the_route_the_metadata_service_receives() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(world(|_| {}));
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let routes_seen = std::sync::Mutex::new(std::collections::HashMap::<Route, usize>::new());
    runner
        .run(
            &(
                prop_oneof![
                    3 => woven_path(),
                    1 => proptest::collection::vec(piece(), 0..12).prop_map(|p| format!("/{}", p.concat())),
                ],
                "[a-z0-9=&%]{0,12}",
            ),
            |(raw_path, query)| {
                let chosen = classify(&raw_path);
                *routes_seen.lock().unwrap().entry(chosen).or_default() += 1;
                let target = if query.is_empty() {
                    raw_path.clone()
                } else {
                    format!("{raw_path}?{query}")
                };
                let before = w.upstream_paths().len();
                let (status, body) = rt.block_on(raw(w.addr, UNBOUND, &get(&target)));
                prop_assert!(status != 0, "{target}: no answer");
                prop_assert_eq!(w.token_owner(&body), None, "{} got a token", target);
                let received = w.upstream_paths()[before..].to_vec();
                match chosen {
                    Route::Other | Route::Instance => {
                        prop_assert_eq!(received.len(), 1, "{}: {:?}", target, received);
                        let (path, q) = &received[0];
                        let normal = normalize(&raw_path).unwrap();
                        prop_assert_eq!(path.as_str(), &*normal.wire(), "{}", target);
                        prop_assert_eq!(classify(path), chosen, "{}", target);
                        prop_assert_eq!(q, &query);
                    }
                    Route::Token | Route::Invalid | Route::HostToken => {
                        prop_assert!(received.is_empty(), "{}: relayed {:?}", target, received);
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    // The generator reaches every route, so the property is not vacuous for any of them.
    let seen = routes_seen.into_inner().unwrap();
    println!("cases per route: {seen:?}");
    assert_eq!(seen.len(), 5, "{seen:?}");
    rt.block_on(async move { w.azure.shutdown().await });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_cannot_grow_the_metrics() {
    // Thousands of distinct fetches: the metadata service's limits and NMI's pacing of them
    // (tests/imds_limits.rs) would make this a 3-minute test of something else.
    let w = world(|s| {
        s.max_token_cache_slots = 500;
        s.max_connections_per_source = 1024;
        s.max_metadata_fetches = 0;
        s.max_metadata_fetches_per_second = 0;
    })
    .await;
    w.azure
        .reconfigure(|c| c.imds_limits = aad_pod_identity_sim::azure::ImdsLimits::OFF);
    let unbound = client_from(UNBOUND);
    let bound = client_from(BOUND);
    let base = format!("http://{}", w.addr);
    // One legitimate request first, so the baseline has its series.
    let r = bound
        .get(format!("{base}/metadata/identity/oauth2/token?resource=https%3A%2F%2Fvault.azure.net&api-version=2018-02-01"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let baseline = w.series().await;

    // The bar: 3000 requests from one pod, unique paths and resources, answered 400 or passed
    // through.
    let hostile = |i: usize| {
        let c = unbound.clone();
        let base = base.clone();
        async move {
            let (url, metadata) = match i % 4 {
                0 => (
                    format!("{base}/metadata/identity/oauth2/token/{i}?resource=r{i}"),
                    false,
                ),
                1 => (
                    format!("{base}/metadata/identity/oauth2/token/u{i}?resource="),
                    true,
                ),
                2 => (
                    format!("{base}/metadata/identity%5Coauth2/token/{i}?resource=r{i}"),
                    true,
                ),
                _ => (
                    format!("{base}/metadata/unique-{i}?resource=r{i}&api-version=2021-02-01"),
                    true,
                ),
            };
            let mut req = c.get(url);
            if metadata {
                req = req.header("Metadata", "true");
            }
            let status = req.send().await.unwrap().status().as_u16();
            assert!(matches!(status, 400 | 404), "{i}: {status}");
        }
    };
    futures::stream::iter(0..3000)
        .map(hostile)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let after_bar = w.series().await;
    println!("series: baseline {baseline}, after 3000 hostile requests {after_bar}");
    assert!(
        after_bar <= baseline + 100,
        "3000 hostile requests added {} series",
        after_bar - baseline
    );

    // 10k more with unique paths and resources, including tokens a bound pod really gets for
    // resources nobody has asked for before, and an unbound pod's refused token requests.
    let varied = |i: usize| {
        let (u, b, base) = (unbound.clone(), bound.clone(), base.clone());
        async move {
            let (c, url) = match i % 3 {
                0 => (
                    b,
                    format!(
                        "{base}/metadata/identity/oauth2/token?resource=api%3A%2F%2Fapp-{i}&api-version=2018-02-01"
                    ),
                ),
                1 => (
                    u,
                    format!(
                        "{base}/metadata/identity/oauth2/token?resource=https%3A%2F%2Fr{i}.example&api-version=2018-02-01"
                    ),
                ),
                _ => (u, format!("{base}/p/{i}/metadata?resource=r{i}")),
            };
            let r = c.get(url).header("Metadata", "true").send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert!(matches!(status, 200 | 404 | 429), "{i}: {status} {body}");
        }
    };
    futures::stream::iter(0..1000)
        .map(varied)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let after_first_thousand = w.series().await;
    futures::stream::iter(1000..10_000)
        .map(varied)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let after_all = w.series().await;
    println!("series after 1k varied: {after_first_thousand}, after 10k: {after_all}");
    assert!(after_first_thousand <= baseline + 200);
    assert_eq!(
        after_all, after_first_thousand,
        "9000 more unique requests created series"
    );
    assert!(
        w.nmi.cache.slot_count() <= 500,
        "{}",
        w.nmi.cache.slot_count()
    );
    let text = reqwest::get(format!("http://{}/metrics", w.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("unique-"), "a path became a label");
    assert!(!text.contains("app-"), "a resource became a label");
    assert!(text.contains(r#"operation_type="/metadata/identity/oauth2/token""#));
    assert!(text.contains(r#"resource="other""#));
    assert!(text.contains("aadpodidentity_nmi_token_cache_evictions_total"));
}

use futures::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bound_per_address_are_refused_and_closed() {
    let w = world(|s| s.max_connections_per_source = 4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(UNBOUND.parse().unwrap(), 0))
            .unwrap();
        held.push(socket.connect(w.addr).await.unwrap());
    }
    let ip: IpAddr = UNBOUND.parse().unwrap();
    eventually("four connections to be counted", || {
        w.nmi.http.connections_from(ip) == 4
    })
    .await;
    let (status, body) = raw(w.addr, UNBOUND, &get("/metadata/instance")).await;
    assert_eq!(
        (status, body.as_str()),
        (429, "too many connections from this address\n")
    );
    // Another address is not affected.
    let (status, _) = raw(
        w.addr,
        BOUND,
        &get("/metadata/identity/oauth2/token?resource=r&api-version=2018-02-01"),
    )
    .await;
    assert_eq!(status, 200);
    drop(held);
    eventually("closed connections to be released", || {
        w.nmi.http.connections_from(ip) == 0
    })
    .await;
    let (status, _) = raw(
        w.addr,
        UNBOUND,
        &get("/metadata/instance?api-version=2021-02-01"),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_greedy_clients_are_answered_at_once_and_never_delay_a_bound_pod() {
    let w = world(|s| {
        s.max_pass_through = 2;
        s.pass_through_body_timeout = Duration::from_millis(300);
        s.max_waiters_per_pod = 4;
        s.assignment_wait = Duration::from_secs(30);
    })
    .await;
    let token_url = format!(
        "http://{}/metadata/identity/oauth2/token?resource=https%3A%2F%2Fvault.azure.net&api-version=2018-02-01",
        w.addr
    );
    let bound = client_from(BOUND);
    assert_eq!(
        bound
            .get(&token_url)
            .header("Metadata", "true")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The metadata service becomes slow: two relayed requests fill the pass-through.
    w.azure
        .reconfigure(|c| c.imds_latency = Latency::Fixed(Duration::from_secs(3)));
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = w.addr;
            tokio::spawn(async move {
                raw(
                    addr,
                    UNBOUND,
                    &get("/metadata/instance?api-version=2021-02-01"),
                )
                .await
            })
        })
        .collect();
    // Four token requests from the unbound pod park (it has no identity yet)...
    let parked: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (client_from(UNBOUND), token_url.clone());
            tokio::spawn(async move { c.get(url).header("Metadata", "true").send().await })
        })
        .collect();
    // ...and a body that never finishes.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(UNBOUND.parse().unwrap(), 0))
        .unwrap();
    let mut trickle = socket.connect(w.addr).await.unwrap();
    trickle
        .write_all(b"POST /metadata/upload HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    eventually("four requests to park", || {
        w.nmi.broker.waiters.parked() == 4
    })
    .await;

    // Over each bound: answered at once.
    let (status, body) = raw(
        w.addr,
        UNBOUND,
        &get("/metadata/instance?api-version=2021-02-01"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let r = client_from(UNBOUND)
        .get(&token_url)
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    // The bound pod is served from its cache while all of that is held.
    let r = bound
        .get(&token_url)
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        w.token_owner(&r.text().await.unwrap()),
        Some(w.bound_id.clone())
    );
    assert!(
        slow.iter().all(|t| !t.is_finished()),
        "the slow relays are still held"
    );
    assert_eq!(
        w.nmi.broker.waiters.parked(),
        4,
        "the parked requests are still held"
    );

    // The trickling body is cut off.
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), trickle.read_to_end(&mut out))
        .await
        .expect("connection closed")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    for t in parked {
        t.abort();
    }
    for t in slow {
        t.abort();
    }
    let text = reqwest::get(format!("http://{}/metrics", w.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["pass_through_busy", "waiters_per_pod", "body_timeout"] {
        assert!(
            text.contains(&format!(
                r#"aadpodidentity_nmi_rejected_requests_total{{node="{}",reason="{reason}"}} 1"#,
                w.node
            )),
            "{reason} not counted:\n{text}"
        );
    }
}

/// Counts panics anywhere in this test process (an HTTP worker that panics is restarted by the
/// server, so a panic would otherwise go unnoticed).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("PUT".to_string()),
        Just("DELETE".to_string()),
        Just("HEAD".to_string()),
        Just("OPTIONS".to_string()),
        Just("CONNECT".to_string()),
        "[A-Z]{1,8}",
        "[ -~]{0,6}",
    ]
}

fn query(ids: Vec<String>) -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("resource"),
        Just("client_id"),
        Just("msi_res_id"),
        Just("mi_res_id"),
        Just("object_id"),
        Just("api-version"),
        Just("principal_id"),
        Just("x"),
    ];
    let value = prop_oneof![
        proptest::sample::select(ids),
        Just("https%3A%2F%2Fvault.azure.net".to_string()),
        Just("2018-02-01".to_string()),
        Just(String::new()),
        Just("%00".to_string()),
        Just("%ZZ".to_string()),
        "[ -~]{0,12}".prop_map(|s| s.replace([' ', '#'], "+")),
    ];
    proptest::collection::vec((key, value), 0..6).prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Metadata: true".to_string()),
        Just("Metadata: TRUE".to_string()),
        Just("metadata: false".to_string()),
        Just("podns: ns".to_string()),
        Just("podname: bound".to_string()),
        Just("Host: 169.254.169.254".to_string()),
        Just("X-Forwarded-For: 127.0.13.2".to_string()),
        Just("Forwarded: for=127.0.13.2".to_string()),
        Just("Content-Length: 5".to_string()),
        Just("Content-Length: -1".to_string()),
        Just("Content-Length: 99999999999999999999".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Connection: keep-alive".to_string()),
        Just("Expect: 100-continue".to_string()),
        "[A-Za-z-]{1,10}: [ -~]{0,20}",
        "[ -~]{0,20}",
    ]
}

#[test]
fn fuzzed_requests_never_panic_nor_give_a_token_to_a_pod_it_is_not_bound_to() {
    count_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(world(|_| {}));
    let mut ids = w.selectors.clone();
    ids.push(w.bound_id.to_uppercase());
    ids.push("oid-x".to_string());
    let path = prop_oneof![
        proptest::collection::vec(piece(), 0..10).prop_map(|p| format!("/{}", p.concat())),
        Just("/metadata/identity/oauth2/token".to_string()),
        Just("/host/token/".to_string()),
        "[!-~]{0,30}",
    ];
    // Half the cases are token requests an SDK could send, dressed with random extras, so the
    // bound pod does get tokens and "only its own" is checked, not vacuous.
    let plausible = (
        Just("GET".to_string()),
        prop_oneof![
            Just("/metadata/identity/oauth2/token".to_string()),
            woven_path(),
        ],
        proptest::collection::vec(
            (
                proptest::sample::select(vec![
                    "client_id",
                    "msi_res_id",
                    "mi_res_id",
                    "object_id",
                    "x",
                ]),
                proptest::sample::select(ids.clone()),
            ),
            0..3,
        )
        .prop_map(|kv| {
            let extra: String = kv.iter().map(|(k, v)| format!("&{k}={v}")).collect();
            format!("resource=r&api-version=2018-02-01{extra}")
        }),
        proptest::collection::vec(header(), 0..3).prop_map(|mut h| {
            h.push("Host: 169.254.169.254".to_string());
            h.push("Metadata: true".to_string());
            h
        }),
        Just("HTTP/1.1"),
        Just(String::new()),
    );
    let arbitrary = (
        method(),
        path,
        query(ids),
        proptest::collection::vec(header(), 0..6),
        proptest::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/9.9", ""]),
        "[ -~]{0,16}",
    );
    let case = (
        proptest::sample::select(vec![BOUND, UNBOUND, UNKNOWN]),
        prop_oneof![plausible.boxed(), arbitrary.boxed()],
    )
        .prop_map(|(from, (m, p, q, h, v, b))| (from, m, p, q, h, v, b));
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let tokens = AtomicUsize::new(0);
    runner
        .run(
            &case,
            |(from, method, path, query, headers, version, body)| {
                let target = if query.is_empty() {
                    path.clone()
                } else {
                    format!("{path}?{query}")
                };
                let mut req = format!("{method} {target} {version}\r\n");
                for h in &headers {
                    req.push_str(h);
                    req.push_str("\r\n");
                }
                req.push_str("Connection: close\r\n\r\n");
                req.push_str(&body);
                let (status, answer) = rt.block_on(raw(w.addr, from, req.as_bytes()));
                if let Some(owner) = w.token_owner(&answer) {
                    tokens.fetch_add(1, Ordering::SeqCst);
                    prop_assert_eq!(
                        from,
                        BOUND,
                        "{:?} got a token ({}): {:?}",
                        from,
                        status,
                        req
                    );
                    prop_assert_eq!(&owner, &w.bound_id, "token of another identity: {:?}", req);
                }
                prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "panicked on {:?}", req);
                Ok(())
            },
        )
        .unwrap();
    // The server still answers, and the bound pod still gets its token.
    let (status, body) = rt.block_on(raw(
        w.addr,
        BOUND,
        &get("/metadata/identity/oauth2/token?resource=r&api-version=2018-02-01"),
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.token_owner(&body), Some(w.bound_id.clone()));
    println!(
        "{} fuzzed requests were answered with a token (all the bound pod's own)",
        tokens.load(Ordering::SeqCst)
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    rt.block_on(async move { w.azure.shutdown().await });
}
