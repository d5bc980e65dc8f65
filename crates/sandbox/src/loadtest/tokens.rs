//! Token requests as the pods make them: each bound to its pod's address (what iptables would
//! deliver to NMI as that pod), answers recorded in the run's log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::params::RESOURCES;
use super::timeline::{Ctx, Request};

/// A client whose requests leave from the pod's address `ip`. NMI speaks plain HTTP, so no root
/// certificate is loaded: building a client with the platform's roots reads and parses every
/// certificate file on the machine, which for a burst of a thousand pods cost the driver (and
/// the simulators sharing its process) more CPU than everything else it did.
pub(super) fn pod_client(ip: IpAddr, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .local_address(Some(ip))
        .timeout(timeout)
        .no_proxy()
        .tls_certs_only(std::iter::empty())
        .build()
}

/// One token request bound to the pod's address; (status or 0, error).
pub(super) async fn token(
    ip: IpAddr,
    nmi: SocketAddr,
    client_id: &str,
    resource: &str,
    timeout: Duration,
) -> (u16, Option<String>) {
    match pod_client(ip, timeout) {
        Ok(client) => token_with(&client, nmi, client_id, resource).await,
        Err(e) => (0, Some(e.to_string())),
    }
}

/// One token request with a pod's client ([`pod_client`]); (status or 0, error).
async fn token_with(
    client: &reqwest::Client,
    nmi: SocketAddr,
    client_id: &str,
    resource: &str,
) -> (u16, Option<String>) {
    let mut url = match url::Url::parse(&format!("http://{nmi}/metadata/identity/oauth2/token")) {
        Ok(u) => u,
        Err(e) => return (0, Some(e.to_string())),
    };
    url.query_pairs_mut()
        .append_pair("api-version", "2018-02-01")
        .append_pair("resource", resource)
        .append_pair("client_id", client_id);
    match client.get(url).header("Metadata", "true").send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes().await {
                // A 200 must carry a token, or it is not an answer.
                Ok(b) if status == 200 => {
                    let ok = serde_json::from_slice::<Value>(&b)
                        .ok()
                        .is_some_and(|v| v["access_token"].as_str().is_some_and(|t| !t.is_empty()));
                    if ok {
                        (200, None)
                    } else {
                        (200, Some("200 without an access_token".into()))
                    }
                }
                Ok(b) => (
                    status,
                    Some(String::from_utf8_lossy(&b).chars().take(200).collect()),
                ),
                Err(e) => (status, Some(e.to_string())),
            }
        }
        Err(e) => (0, Some(e.to_string())),
    }
}

/// Sends the pod's token requests (at once, concurrently) and records their answers.
pub(super) fn spawn_requests(ctx: &Arc<Ctx>, name: &str, ip: IpAddr, node: &str, identity: usize) {
    let Some(nmi) = ctx.nmi.get(node).copied() else {
        ctx.lock()
            .violations
            .push(format!("pod {name} runs on {node}, which has no NMI"));
        return;
    };
    // Unbound probes ask for identity 0, which they are not bound to.
    let client_id = ctx.client_ids[identity.min(ctx.client_ids.len() - 1)].clone();
    let timeout = ctx.params.assignment_wait + Duration::from_secs(15);
    for &resource in RESOURCES.iter().take(ctx.params.requests_per_pod) {
        let (ctx, name, client_id) = (Arc::clone(ctx), name.to_string(), client_id.clone());
        let index = {
            let mut st = ctx.lock();
            let Some(p) = st.pods.get_mut(&name) else {
                return;
            };
            p.requests.push(Request {
                sent: ctx.now(),
                answered: None,
                status: 0,
                error: None,
            });
            p.requests.len() - 1
        };
        // Built here, on the sandbox's thread: building a client costs more than reading its
        // answer, and the probes' thread is there to read answers as they arrive.
        let client = pod_client(ip, timeout);
        ctx.probes.clone().spawn(async move {
            let (status, error) = match client {
                Ok(c) => token_with(&c, nmi, &client_id, resource).await,
                Err(e) => (0, Some(e.to_string())),
            };
            let at = ctx.now();
            let mut st = ctx.lock();
            if let Some(r) = st
                .pods
                .get_mut(&name)
                .and_then(|p| p.requests.get_mut(index))
            {
                r.answered = Some(at);
                r.status = status;
                r.error = error;
            }
        });
    }
}
