//! Shared pieces of the NMI integration tests: a fake token source, a stand-in metadata service
//! on loopback, NMI served on port 0, and builders for pods and AzureAssignedIdentities.

#![allow(dead_code)]

use aad_pod_identity::actors::nmi::source::{
    SourceError, TokenRequest, TokenSource, TokenTarget, UpstreamToken, unix_now,
};
use aad_pod_identity::crd::{
    AssignedState, AzureAssignedIdentity, AzureAssignedIdentitySpec, AzureAssignedIdentityStatus,
    AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec, AzureIdentitySpec, IdentityType,
};
use aad_pod_identity::nmi::{Nmi, NmiSettings};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use async_trait::async_trait;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const NODE: &str = "node-1";

/// Token source that answers like the metadata service after `delay`; records requests. Client
/// id `refused` gets a 400 error document, `down` an unreachable service.
pub struct FakeSource {
    pub calls: AtomicUsize,
    pub seen: Mutex<Vec<TokenRequest>>,
    pub delay: Duration,
}

impl FakeSource {
    pub fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            delay,
        })
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A JWT-shaped access token whose payload names `who` as `oid`.
pub fn jwt_for(who: &str) -> String {
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!(r#"{{"oid":"oid-{who}"}}"#));
    format!("eyJhbGciOiJub25lIn0.{claims}.c2ln")
}

#[async_trait]
impl TokenSource for FakeSource {
    async fn fetch(&self, req: &TokenRequest) -> Result<UpstreamToken, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(req.clone());
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let who = match &req.target {
            TokenTarget::Node { client_id } => client_id.clone().unwrap_or_else(|| "node".into()),
            TokenTarget::UserAssigned { client_id, .. } => client_id.clone(),
            TokenTarget::ServicePrincipal { identity, .. } => identity.client_id.clone(),
            TokenTarget::Federated { client_id, .. } => client_id.clone(),
        };
        match who.as_str() {
            "down" => return Err(SourceError::Unreachable("connection refused".into())),
            "refused" => {
                return Ok(UpstreamToken {
                    status: 400,
                    body: r#"{"error":"invalid_request","error_description":"Identity not found"}"#
                        .into(),
                });
            }
            _ => {}
        }
        let now = unix_now();
        let body = format!(
            r#"{{"access_token":"{}","client_id":"{who}","expires_in":"86399","expires_on":"{}","ext_expires_in":"86399","not_before":"{}","resource":"{}","token_type":"Bearer"}}"#,
            jwt_for(&who),
            now + 86_399,
            now,
            req.resource
        );
        Ok(UpstreamToken {
            status: 200,
            body: body.into(),
        })
    }
}

/// A stand-in metadata service: `/metadata/instance` answers instance JSON; everything else
/// echoes what it received (method, path and query, headers, body) with status 207 and a
/// custom response header.
pub fn start_metadata_standin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(|| {
        App::new()
            .route(
                "/metadata/instance",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .insert_header(("Content-Type", "application/json; charset=utf-8"))
                        .body(r#"{"compute":{"name":"standin"}}"#)
                }),
            )
            .default_service(web::to(|req: HttpRequest, body: web::Bytes| async move {
                let mut headers: Vec<(String, String)> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                headers.sort();
                let echo = serde_json::json!({
                    "method": req.method().as_str(),
                    "uri": req.uri().to_string(),
                    "headers": headers,
                    "body": String::from_utf8_lossy(&body),
                });
                HttpResponse::build(actix_web::http::StatusCode::from_u16(207).unwrap())
                    .insert_header(("X-Standin", "yes"))
                    .json(echo)
            }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    addr
}

/// Settings for a test NMI on 127.0.0.1:0 with short waits.
pub fn settings(metadata: SocketAddr) -> NmiSettings {
    let mut s = NmiSettings::new(NODE, metadata);
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.probe = "127.0.0.1:0".parse().unwrap();
    s.metrics = "127.0.0.1:0".parse().unwrap();
    s.assignment_wait = Duration::from_millis(400);
    s.assigned_grace = Duration::from_millis(0);
    s.pod_arrival_timeout = Duration::from_millis(200);
    s.http_workers = 2;
    s
}

/// A served NMI (without watches: the test feeds the indexes the way the watches do).
pub struct Served {
    pub nmi: Arc<Nmi>,
    pub addr: SocketAddr,
    pub probe: SocketAddr,
    pub metrics: SocketAddr,
    pub source: Arc<FakeSource>,
    pub base: String,
}

pub fn serve(settings: &NmiSettings, source: Arc<FakeSource>) -> Served {
    let shared = aad_pod_identity::metrics::Metrics::new();
    let nmi = Arc::new(Nmi::new(settings, source.clone(), &shared).unwrap());
    let l = TcpListener::bind(settings.listen).unwrap();
    let addr = l.local_addr().unwrap();
    let server =
        aad_pod_identity::http::nmi::serve(l, Arc::clone(&nmi.http), settings.http_workers)
            .unwrap();
    tokio::spawn(server);
    let pl = TcpListener::bind(settings.probe).unwrap();
    let probe = pl.local_addr().unwrap();
    let readiness: Arc<dyn aad_pod_identity::http::probes::Readiness> = nmi.readiness.clone();
    tokio::spawn(aad_pod_identity::http::probes::serve_health(pl, readiness).unwrap());
    let ml = TcpListener::bind(settings.metrics).unwrap();
    let metrics = ml.local_addr().unwrap();
    tokio::spawn(
        aad_pod_identity::http::probes::serve_metrics(ml, shared.registry().clone()).unwrap(),
    );
    Served {
        nmi,
        addr,
        probe,
        metrics,
        source,
        base: format!("http://{addr}"),
    }
}

/// Waits (bounded, 20 s) for `cond`; test scaffolding only.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded, 20 s) until `GET url` answers `status`.
pub async fn eventually_status(url: &str, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = reqwest::get(url).await.unwrap().status().as_u16();
        if got == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} still answers {got}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An HTTP client whose connections come from `ip` (a "pod").
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(ip.parse().unwrap()))
        .no_proxy()
        .build()
        .unwrap()
}

pub fn pod(ns: &str, name: &str, ip: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{ns}-{name}")),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(NODE.into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..PodStatus::default()
        }),
    }
}

pub fn identity(ns: &str, name: &str, client_id: &str, type_: IdentityType) -> AzureIdentity {
    let mut id = AzureIdentity::new(
        name,
        AzureIdentitySpec {
            type_,
            client_id: client_id.into(),
            resource_id: format!(
                "/subscriptions/sub/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
            ),
            ..AzureIdentitySpec::default()
        },
    );
    id.metadata.namespace = Some(ns.into());
    id
}

pub fn assigned(
    pod_ns: &str,
    pod: &str,
    id: &AzureIdentity,
    state: AssignedState,
) -> AzureAssignedIdentity {
    let id_ns = id.metadata.namespace.clone().unwrap_or_default();
    let id_name = id.metadata.name.clone().unwrap_or_default();
    let mut binding = AzureIdentityBinding::new(
        &format!("{id_name}-binding"),
        AzureIdentityBindingSpec {
            azure_identity: id_name.clone(),
            selector: id_name.clone(),
            weight: 0,
        },
    );
    binding.metadata.namespace = Some(id_ns.clone());
    let mut aai = AzureAssignedIdentity::new(
        &format!("{pod}-{pod_ns}-{id_name}"),
        AzureAssignedIdentitySpec {
            azure_identity_ref: Some(Box::new(id.clone())),
            azure_binding_ref: Some(Box::new(binding)),
            pod: pod.into(),
            pod_namespace: pod_ns.into(),
            node_name: NODE.into(),
            replicas: None,
        },
    );
    aai.metadata.namespace = Some(id_ns);
    aai.status = Some(AzureAssignedIdentityStatus {
        available_replicas: 0,
        status: state,
    });
    aai
}

/// The real token source for type-0 identities only: the metadata service at `imds` and Azure AD
/// at `aad`, with a Kubernetes client that is never called (no service principal is used).
pub fn metadata_only_source(
    imds: SocketAddr,
    aad: String,
    timeout: Duration,
) -> aad_pod_identity::actors::nmi::cloud_source::CloudTokenSource {
    let kube =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    aad_pod_identity::actors::nmi::cloud_source::CloudTokenSource::new(
        &imds.to_string(),
        kube,
        aad,
        timeout,
    )
    .unwrap()
}
