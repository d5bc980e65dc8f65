//! NMI's clients of the node's metadata service (the token client and the pass-through) never go
//! through a web proxy, whatever `HTTP_PROXY` or `ALL_PROXY` say: Azure documents that clients
//! must bypass proxies for the metadata service, which is link-local, so a proxy would reach
//! another machine's metadata service or see this node's tokens.
//!
//! The proxy variables are read by the HTTP client when it is built, and a running test cannot
//! change its own environment safely, so the requests are made by a child run of this test with
//! the variables set, pointing at a listener here that counts every connection it is offered.

mod azure_common;

use std::io::Read as _;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aad_pod_identity::cloud::imds::{IdentitySelector, ImdsClient};
use aad_pod_identity::http::proxy::Proxy;
use aad_pod_identity::http::request::normalize;
use aad_pod_identity_sim::azure::AzureSimConfig;
use aad_pod_identity_sim::topology::Topology;
use azure_common::sim;
use bytes::Bytes;

const TEST: &str = "metadata_requests_bypass_the_proxy_the_environment_names";
/// Set in the child's environment: it makes the requests instead of starting a child.
const CHILD: &str = "AADPI_TEST_NO_PROXY_CHILD";
const VAULT: &str = "https://vault.azure.net";

#[tokio::test]
async fn metadata_requests_bypass_the_proxy_the_environment_names() {
    if std::env::var_os(CHILD).is_some() {
        return requests_from_the_child().await;
    }
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", proxy.local_addr().unwrap());
    let offered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&offered);
    std::thread::spawn(move || {
        for conn in proxy.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            // Read what was sent, answer nothing: a client that used the proxy fails.
            let mut conn = conn;
            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = conn.read(&mut [0; 1024]);
        }
    });

    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("HTTP_PROXY", &url)
        .env("http_proxy", &url)
        .env("ALL_PROXY", &url)
        .env("all_proxy", &url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child failed:\n{stdout}\n{stderr}"
    );
    // A filter that matched nothing would also succeed: the child must have run the test.
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test:\n{stdout}"
    );
    assert_eq!(
        offered.load(Ordering::SeqCst),
        0,
        "a metadata-service request went to the proxy"
    );
}

/// With the proxy variables set: a token request and a relayed request reach the simulated
/// metadata service and get its answers.
async fn requests_from_the_child() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let addr = sim.imds_addr(&t.nodes()[0].name).unwrap();
    let client_id = t.identity_client_id(&t.identities[0]).to_string();

    // Not assigned to the node (the ARM client that could assign it honours the proxy, as it
    // should): the service's own refusal shows the request reached it.
    let r = ImdsClient::new(&addr.to_string())
        .unwrap()
        .token(VAULT, &IdentitySelector::ClientId(client_id.clone()))
        .await
        .expect("the metadata service answers");
    the_services_refusal(r.status, &r.body);

    let relay = Proxy::new(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
    let path = normalize("/metadata/identity/oauth2/token").unwrap();
    let query = format!("api-version=2018-02-01&resource={VAULT}&client_id={client_id}");
    let got = relay
        .forward(
            "GET",
            &path,
            &query,
            [("Metadata", b"true".as_slice())].into_iter(),
            Bytes::new(),
        )
        .await
        .expect("the metadata service answers the relay");
    the_services_refusal(got.status, &got.body);
}

/// The simulated metadata service's answer for an identity the node does not have.
fn the_services_refusal(status: u16, body: &[u8]) {
    let body = String::from_utf8_lossy(body);
    assert_eq!(
        (status, body.contains("Identity not found")),
        (400, true),
        "{body}"
    );
}
