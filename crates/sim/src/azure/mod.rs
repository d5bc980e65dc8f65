//! An Azure simulator: ARM identity state for VMs and scale sets, the metadata service per node,
//! and Azure AD client credentials, speaking the real wire formats.
//!
//! Built from a [`Topology`]; every listener is on 127.0.0.1 (one for ARM and Azure AD, one
//! per simulated node for its metadata service), all served by one actix-web server. Plain HTTP:
//! our clients attach bearer tokens with their own policy (see `cloud::credential`), and Azure
//! SDKs reach a metadata service over HTTP anyway. With `tls`, ARM and Azure AD are also served
//! over HTTPS (a per-run CA, PEM on disk) for Azure's own SDKs, which insist on it.
//!
//! Who owns what: `http` routes each request by listener and path and logs it; `arm_http`
//! serves ARM, `imds_http` the metadata service, `aad_http` Azure AD (with `federation` for
//! federated assertions); `wire` holds the answer shapes and body reading they share; `state`
//! owns the simulated resources, faults and budgets; `tokens` signs and checks tokens.
//!
//! Tests and load tests steer it through [`AzureSimHandle`]: counters, a request log with
//! arrival times, injected faults, latency, a per-subscription write budget, and the registry
//! of identities and service principals.

mod aad_http;
mod arm_http;
mod federation;
mod http;
mod imds_http;
mod imds_limits;
mod state;
mod tls;
mod tokens;
mod wire;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::topology::{Host, Topology};

pub use federation::FederatedCredential;
pub use imds_limits::{ImdsLimits, ImdsLoad};
pub use state::{
    Counters, Fault, FaultKind, FaultTarget, IdentityRecord, RequestRecord, ServicePrincipal,
};
pub use tokens::TokenClaims;

use state::{Compute, Inner, compute_key};

/// Errors starting or steering the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A loopback listener could not be bound.
    #[error("cannot bind a loopback listener")]
    Bind(#[source] std::io::Error),
    /// No such node in the topology.
    #[error("unknown node {0}")]
    UnknownNode(String),
    /// No such identity in the registry.
    #[error("unknown identity {0}")]
    UnknownIdentity(String),
    /// No such VM or scale set.
    #[error("unknown compute resource {0}")]
    UnknownCompute(String),
    /// A certificate could not be registered.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The HTTPS listener's CA and certificate could not be made or written.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Response delay of a simulated service.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Latency {
    /// Answer at once.
    #[default]
    None,
    /// Always this long.
    Fixed(Duration),
    /// Uniformly distributed between `min` and `max`.
    Uniform {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
}

impl Latency {
    fn sample(&self) -> Duration {
        match *self {
            Latency::None => Duration::ZERO,
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => {
                if max <= min {
                    min
                } else {
                    min + (max - min).mul_f64(rand::random::<f64>())
                }
            }
        }
    }
}

/// How an accepted PATCH completes. In every mode the write itself takes
/// [`AzureSimConfig::arm_latency`]: as on ARM, an operation runs for its own time from the
/// moment the PATCH is received, however often (or whether) anyone polls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LroMode {
    /// The PATCH answer waits for the write and is 200 with the final resource
    /// (provisioningState `Succeeded`).
    Sync,
    /// 200 at once with provisioningState `Updating` and `Azure-AsyncOperation` (what
    /// Microsoft.Compute answers a VM or scale-set PATCH); the operation status reads
    /// `InProgress` until the write is done, then its outcome.
    AsyncOperation,
    /// 202 at once with `Location`; polls answer 202 until the write is done, then 200 with
    /// the resource (or the error).
    Location,
}

/// Simulator settings. `Default` is a fast, well-behaved Azure.
#[derive(Clone, Debug)]
pub struct AzureSimConfig {
    /// How long an ARM write (a VM or scale-set PATCH) takes, from the moment it is received
    /// until its operation completes. Reads, PATCH answers of asynchronous operations and
    /// operation polls are answered at once (unless a fault says otherwise).
    pub arm_latency: Latency,
    /// Delay of every metadata-service answer.
    pub imds_latency: Latency,
    /// Per-VM (per node) limits of the metadata service's identity endpoint; beyond them it
    /// answers 429. Default: Azure's documented 5 concurrent, 20 per second
    /// ([`ImdsLimits::AZURE`]); [`ImdsLimits::OFF`] for none.
    pub imds_limits: ImdsLimits,
    /// Delay of every Azure AD answer.
    pub aad_latency: Latency,
    /// How PATCHes complete.
    pub lro: LroMode,
    /// The wait announced on a PATCH answer that starts an operation and on every poll that
    /// finds it in progress. `None` sends no hint, which is what Microsoft.Compute does, and a
    /// client polls at its own interval (MIC: 5 s, as the original). A whole number of seconds
    /// is sent as `Retry-After`; a finer value (the sandbox's clock runs 100 times fast) as
    /// `retry-after-ms`, the millisecond form Azure SDKs honour, with `Retry-After` rounded up
    /// beside it. The default, 50 ms, is MIC's 5 s interval at the sandbox's clock factor.
    pub lro_retry_after: Option<Duration>,
    /// At most `writes` PATCHes per `window` per subscription; more get 429 + `Retry-After`.
    pub write_budget: Option<(u32, Duration)>,
    /// Requests arriving this soon after a 429 are not counted as throttle violations
    /// (they were already in flight).
    pub throttle_grace: Duration,
    /// An identity becomes usable on the metadata service this long after assignment.
    pub propagation_delay: Duration,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// ARM requires a bearer token issued by this simulator's Azure AD.
    pub require_auth: bool,
    /// Identity names (from the topology) assigned to every VM and scale set at start, like an
    /// AKS kubelet identity.
    pub preassigned: Vec<String>,
    /// Give every VM and scale set a system-assigned identity at start.
    pub system_assigned: bool,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Location reported for resources and in operation URLs.
    pub location: String,
    /// Also serve ARM and Azure AD over HTTPS on a second listener, with a certificate from a
    /// fresh CA whose PEM is written to [`AzureSimHandle::ca_cert_path`] (for Azure SDKs, which
    /// refuse bearer tokens over plain HTTP).
    pub tls: bool,
}

impl Default for AzureSimConfig {
    fn default() -> Self {
        Self {
            arm_latency: Latency::None,
            imds_latency: Latency::None,
            imds_limits: ImdsLimits::AZURE,
            aad_latency: Latency::None,
            lro: LroMode::AsyncOperation,
            lro_retry_after: Some(DEFAULT_LRO_RETRY_AFTER),
            write_budget: None,
            throttle_grace: Duration::from_millis(200),
            propagation_delay: Duration::ZERO,
            token_lifetime: Duration::from_secs(24 * 3600),
            require_auth: true,
            preassigned: Vec::new(),
            system_assigned: false,
            max_body_bytes: 1 << 20,
            location: "westeurope".into(),
            tls: false,
        }
    }
}

/// [`AzureSimConfig::lro_retry_after`]'s default: MIC's 5 s poll interval at the sandbox's
/// clock factor of 100.
pub const DEFAULT_LRO_RETRY_AFTER: Duration = Duration::from_millis(50);

/// The audience ARM tokens must carry.
pub const ARM_RESOURCE: &str = "https://management.azure.com/";

pub(crate) struct Shared {
    pub inner: Mutex<Inner>,
    pub config: Mutex<AzureSimConfig>,
    pub signer: tokens::TokenSigner,
    pub mgmt_addr: SocketAddr,
    /// The HTTPS management listener, when TLS is on.
    pub mgmt_tls_addr: Option<SocketAddr>,
    /// Node listener address → (node name, compute key).
    pub nodes_by_addr: HashMap<SocketAddr, (String, String)>,
    /// Cancelled on shutdown so hung answers end.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Fetches federated issuers' discovery documents and keys (loopback only).
    pub http: reqwest::Client,
}

impl Shared {
    pub fn config(&self) -> AzureSimConfig {
        self.config.lock().expect("config lock").clone()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("sim lock")
    }
}

/// The Azure simulator.
pub struct AzureSim;

impl AzureSim {
    /// Starts the simulator for `topology` on loopback listeners.
    pub async fn start(
        topology: &Topology,
        config: AzureSimConfig,
    ) -> Result<AzureSimHandle, Error> {
        let bind = || {
            let l = TcpListener::bind("127.0.0.1:0").map_err(Error::Bind)?;
            l.set_nonblocking(true).map_err(Error::Bind)?;
            Ok::<_, Error>(l)
        };
        let mgmt = bind()?;
        let mgmt_addr = mgmt.local_addr().map_err(Error::Bind)?;
        let start = Instant::now();
        let mut compute = HashMap::new();
        let mut identities = std::collections::BTreeMap::new();
        for spec in &topology.identities {
            let rid = topology.identity_resource_id(spec);
            identities.insert(
                rid.to_ascii_lowercase(),
                IdentityRecord {
                    name: spec.name.clone(),
                    resource_id: rid.clone(),
                    client_id: topology.identity_client_id(spec).to_string(),
                    principal_id: topology.identity_principal_id(spec).to_string(),
                    assignable: true,
                },
            );
        }
        let preassigned: Vec<(String, Instant)> = config
            .preassigned
            .iter()
            .filter_map(|name| identities.values().find(|r| &r.name == name))
            .map(|r| (r.resource_id.clone(), start))
            .collect();
        let mut add_compute = |kind: &'static str, name: &str| {
            compute.insert(
                compute_key(
                    kind,
                    &topology.subscription_id,
                    &topology.resource_group,
                    name,
                ),
                Compute {
                    kind,
                    subscription: topology.subscription_id.clone(),
                    resource_group: topology.resource_group.clone(),
                    name: name.to_string(),
                    system_assigned: config.system_assigned,
                    user_assigned: preassigned.clone(),
                    provisioning_state: "Succeeded".into(),
                    etag: 1,
                },
            );
        };
        for ss in &topology.scale_sets {
            add_compute("vmss", &ss.name);
        }
        for vm in &topology.vms {
            add_compute("vm", vm);
        }
        let mut listeners = Vec::new();
        let mut nodes_by_addr = HashMap::new();
        let mut node_addrs = Vec::new();
        for node in topology.nodes() {
            let l = bind()?;
            let addr = l.local_addr().map_err(Error::Bind)?;
            let key = match &node.host {
                Host::ScaleSet { name, .. } => compute_key(
                    "vmss",
                    &topology.subscription_id,
                    &topology.resource_group,
                    name,
                ),
                Host::Vm { name } => compute_key(
                    "vm",
                    &topology.subscription_id,
                    &topology.resource_group,
                    name,
                ),
            };
            nodes_by_addr.insert(addr, (node.name.clone(), key));
            node_addrs.push((node.name.clone(), addr));
            listeners.push(l);
        }
        let tls = if config.tls {
            let l = bind()?;
            let addr = l.local_addr().map_err(Error::Bind)?;
            let (server_config, ca_path) = tls::loopback_server_config()?;
            Some((l, addr, server_config, ca_path))
        } else {
            None
        };
        let signer = tokens::TokenSigner::random();
        let mut service_principals = std::collections::BTreeMap::new();
        let mic = ServicePrincipal {
            client_id: uuid::Uuid::new_v4().to_string(),
            principal_id: uuid::Uuid::new_v4().to_string(),
            tenants: vec![topology.tenant_id.clone()],
            secret: Some(random_secret()),
            certificate: None,
        };
        let mic_client_id = mic.client_id.clone();
        service_principals.insert(mic.client_id.to_ascii_lowercase(), mic);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                tenant_id: topology.tenant_id.clone(),
                compute,
                identities,
                service_principals,
                operations: HashMap::new(),
                running: Vec::new(),
                faults: Default::default(),
                budget_windows: HashMap::new(),
                throttle_windows: HashMap::new(),
                counters: Counters::default(),
                log: Vec::new(),
                federated: std::collections::BTreeMap::new(),
                imds_throttle: HashMap::new(),
            }),
            config: Mutex::new(config),
            signer,
            mgmt_addr,
            mgmt_tls_addr: tls.as_ref().map(|t| t.1),
            nodes_by_addr,
            stopping: tokio_util::sync::CancellationToken::new(),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(federation::FETCH_TIMEOUT)
                .build()
                .map_err(|e| Error::Tls(format!("HTTP client for federated issuers: {e}")))?,
        });
        let (tls_listener, ca_path) = match tls {
            Some((l, _, cfg, path)) => (Some((l, cfg)), Some(path)),
            None => (None, None),
        };
        let server =
            http::serve(shared.clone(), mgmt, tls_listener, listeners).map_err(Error::Bind)?;
        let server_handle = server.handle();
        tokio::spawn(server);
        Ok(AzureSimHandle {
            shared,
            server: server_handle,
            node_addrs,
            topology: topology.clone(),
            mic_client_id,
            ca_path,
        })
    }
}

/// Steering wheel of a running simulator. Dropping it leaves the server running until
/// [`AzureSimHandle::shutdown`] or the runtime ends.
pub struct AzureSimHandle {
    shared: Arc<Shared>,
    server: actix_web::dev::ServerHandle,
    node_addrs: Vec<(String, SocketAddr)>,
    topology: Topology,
    mic_client_id: String,
    ca_path: Option<std::path::PathBuf>,
}

impl AzureSimHandle {
    /// ARM base URL, e.g. `http://127.0.0.1:40123/`.
    #[must_use]
    pub fn arm_endpoint(&self) -> String {
        format!("http://{}/", self.shared.mgmt_addr)
    }

    /// Azure AD authority host (same listener as ARM).
    #[must_use]
    pub fn aad_endpoint(&self) -> String {
        self.arm_endpoint()
    }

    /// Tenant of the simulated Azure AD.
    #[must_use]
    pub fn tenant_id(&self) -> &str {
        &self.topology.tenant_id
    }

    /// The metadata-service address of `node`.
    pub fn imds_addr(&self, node: &str) -> Result<SocketAddr, Error> {
        self.node_addrs
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, a)| *a)
            .ok_or_else(|| Error::UnknownNode(node.to_string()))
    }

    /// `http://<imds_addr(node)>`, the value for `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
    pub fn imds_endpoint(&self, node: &str) -> Result<String, Error> {
        Ok(format!("http://{}", self.imds_addr(node)?))
    }

    /// Every node's metadata-service address, in topology order.
    #[must_use]
    pub fn imds_addrs(&self) -> &[(String, SocketAddr)] {
        &self.node_addrs
    }

    /// ARM and Azure AD over HTTPS (`https://127.0.0.1:port/`), when started with `tls`.
    #[must_use]
    pub fn arm_endpoint_tls(&self) -> Option<String> {
        self.shared.mgmt_tls_addr.map(|a| format!("https://{a}/"))
    }

    /// PEM of the CA that signed the HTTPS listener's certificate, when started with `tls`.
    #[must_use]
    pub fn ca_cert_path(&self) -> Option<&std::path::Path> {
        self.ca_path.as_deref()
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }

    /// Every request answered so far, in arrival order.
    #[must_use]
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// What `node`'s metadata service has seen under its identity limits (all zero before its
    /// first identity request).
    #[must_use]
    pub fn imds_load(&self, node: &str) -> ImdsLoad {
        self.shared
            .lock()
            .imds_throttle
            .get(node)
            .map(imds_limits::NodeThrottle::load)
            .unwrap_or_default()
    }

    /// Zeroes counters, the request log and the metadata services' [`ImdsLoad`]s.
    pub fn reset_counters(&self) {
        let mut inner = self.shared.lock();
        inner.counters = Counters::default();
        inner.log.clear();
        for t in inner.imds_throttle.values_mut() {
            t.reset_load();
        }
    }

    /// Makes the next `times` requests of `target` misbehave as `kind`.
    pub fn inject(&self, target: FaultTarget, times: u32, kind: FaultKind) {
        if times == 0 {
            return;
        }
        self.shared.lock().faults.push_back(Fault {
            target,
            kind,
            remaining: times,
        });
    }

    /// Drops every pending fault.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Changes settings of the running simulator (latency, LRO mode, budget, ...).
    pub fn reconfigure(&self, f: impl FnOnce(&mut AzureSimConfig)) {
        f(&mut self.shared.config.lock().expect("config lock"));
    }

    /// User-assigned identity ids on a VM or scale set (by name), as stored.
    pub fn assigned_identities(&self, compute_name: &str) -> Result<Vec<String>, Error> {
        let inner = self.shared.lock();
        inner
            .compute
            .values()
            .find(|c| c.name.eq_ignore_ascii_case(compute_name))
            .map(|c| c.user_assigned.iter().map(|(id, _)| id.clone()).collect())
            .ok_or_else(|| Error::UnknownCompute(compute_name.to_string()))
    }

    /// Deletes a VM or scale set (by name), as `az vmss delete` would: every later read or
    /// write of it answers 404 `ResourceNotFound`.
    pub fn delete_compute(&self, compute_name: &str) -> Result<(), Error> {
        let mut inner = self.shared.lock();
        let before = inner.compute.len();
        inner
            .compute
            .retain(|_, c| !c.name.eq_ignore_ascii_case(compute_name));
        if inner.compute.len() == before {
            return Err(Error::UnknownCompute(compute_name.to_string()));
        }
        Ok(())
    }

    /// Sets the provisioning state of a VM or scale set (e.g. `Deleting`).
    pub fn set_provisioning_state(&self, compute_name: &str, state: &str) -> Result<(), Error> {
        let mut inner = self.shared.lock();
        let c = inner
            .compute
            .values_mut()
            .find(|c| c.name.eq_ignore_ascii_case(compute_name))
            .ok_or_else(|| Error::UnknownCompute(compute_name.to_string()))?;
        c.provisioning_state = state.to_string();
        Ok(())
    }

    /// Every registered identity.
    #[must_use]
    pub fn identities(&self) -> Vec<IdentityRecord> {
        self.shared.lock().identities.values().cloned().collect()
    }

    /// Registers (or replaces) a user-assigned identity named `name` in the topology's
    /// resource group; returns its record.
    pub fn add_identity(&self, name: &str) -> IdentityRecord {
        let spec = crate::topology::IdentitySpec {
            name: name.to_string(),
            resource_group: self.topology.resource_group.clone(),
        };
        let rec = IdentityRecord {
            name: name.to_string(),
            resource_id: self.topology.identity_resource_id(&spec),
            client_id: self.topology.identity_client_id(&spec).to_string(),
            principal_id: self.topology.identity_principal_id(&spec).to_string(),
            assignable: true,
        };
        self.shared
            .lock()
            .identities
            .insert(rec.resource_id.to_ascii_lowercase(), rec.clone());
        rec
    }

    /// Deletes an identity from the registry (assignments of it stay, as in Azure).
    pub fn delete_identity(&self, resource_id: &str) -> Result<(), Error> {
        self.shared
            .lock()
            .identities
            .remove(&resource_id.to_ascii_lowercase())
            .map(|_| ())
            .ok_or_else(|| Error::UnknownIdentity(resource_id.to_string()))
    }

    /// Makes assigning an identity succeed or fail with `LinkedAuthorizationFailed`.
    pub fn set_identity_assignable(
        &self,
        resource_id: &str,
        assignable: bool,
    ) -> Result<(), Error> {
        let mut inner = self.shared.lock();
        let rec = inner
            .identities
            .get_mut(&resource_id.to_ascii_lowercase())
            .ok_or_else(|| Error::UnknownIdentity(resource_id.to_string()))?;
        rec.assignable = assignable;
        Ok(())
    }

    /// Adds (or replaces, by name) a federated identity credential on the identity with this
    /// resource id, as `az identity federated-credential create` does.
    pub fn add_federated_credential(
        &self,
        resource_id: &str,
        credential: FederatedCredential,
    ) -> Result<(), Error> {
        let mut inner = self.shared.lock();
        let key = resource_id.to_ascii_lowercase();
        if !inner.identities.contains_key(&key) {
            return Err(Error::UnknownIdentity(resource_id.to_string()));
        }
        let list = inner.federated.entry(key).or_default();
        list.retain(|c| c.name != credential.name);
        list.push(credential);
        Ok(())
    }

    /// Removes a federated identity credential by name; true when it existed.
    pub fn remove_federated_credential(&self, resource_id: &str, name: &str) -> bool {
        let mut inner = self.shared.lock();
        inner
            .federated
            .get_mut(&resource_id.to_ascii_lowercase())
            .is_some_and(|list| {
                let before = list.len();
                list.retain(|c| c.name != name);
                list.len() != before
            })
    }

    /// The federated identity credentials of an identity.
    #[must_use]
    pub fn federated_credentials(&self, resource_id: &str) -> Vec<FederatedCredential> {
        self.shared
            .lock()
            .federated
            .get(&resource_id.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Registers a service principal with a client secret in `tenants` (home first).
    pub fn add_service_principal_secret(&self, tenants: &[&str], secret: &str) -> ServicePrincipal {
        let sp = ServicePrincipal {
            client_id: uuid::Uuid::new_v4().to_string(),
            principal_id: uuid::Uuid::new_v4().to_string(),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            secret: Some(secret.to_string()),
            certificate: None,
        };
        self.shared
            .lock()
            .service_principals
            .insert(sp.client_id.to_ascii_lowercase(), sp.clone());
        sp
    }

    /// Registers a service principal authenticating with the certificate `cert_der`.
    pub fn add_service_principal_certificate(
        &self,
        tenants: &[&str],
        cert_der: &[u8],
    ) -> Result<ServicePrincipal, Error> {
        let key = tokens::certificate_rsa_public_key(cert_der).map_err(Error::Certificate)?;
        let sp = ServicePrincipal {
            client_id: uuid::Uuid::new_v4().to_string(),
            principal_id: uuid::Uuid::new_v4().to_string(),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            secret: None,
            certificate: Some((tokens::certificate_thumbprint(cert_der), key)),
        };
        self.shared
            .lock()
            .service_principals
            .insert(sp.client_id.to_ascii_lowercase(), sp.clone());
        Ok(sp)
    }

    /// The service principal MIC uses for ARM: (tenant, client id, secret).
    #[must_use]
    pub fn mic_credentials(&self) -> (String, String, String) {
        let inner = self.shared.lock();
        let sp = &inner.service_principals[&self.mic_client_id.to_ascii_lowercase()];
        (
            self.topology.tenant_id.clone(),
            sp.client_id.clone(),
            sp.secret.clone().unwrap_or_default(),
        )
    }

    /// An azure.json for MIC pointing at this simulator.
    #[must_use]
    pub fn azure_json(&self) -> Value {
        let (tenant, client, secret) = self.mic_credentials();
        json!({
            "cloud": "AzurePublicCloud",
            "tenantId": tenant,
            "aadClientId": client,
            "aadClientSecret": secret,
            "subscriptionId": self.topology.subscription_id,
            "resourceGroup": self.topology.resource_group,
            "vmType": if self.topology.scale_sets.is_empty() { "standard" } else { "vmss" },
            "useManagedIdentityExtension": false,
            "userAssignedIdentityID": "",
            "resourceManagerEndpoint": self.arm_endpoint(),
            "activeDirectoryAuthorityHost": self.aad_endpoint(),
        })
    }

    /// Verifies a token this simulator issued and returns its claims.
    pub fn decode_token(&self, token: &str) -> Result<TokenClaims, String> {
        self.shared.signer.verify(token)
    }

    /// The fragment of the sandbox's `--endpoints-out` document describing simulated Azure.
    /// Includes the simulated service principals' secrets: they exist only in this process
    /// and are what a user needs to write type-1 AzureIdentity objects.
    #[must_use]
    pub fn endpoints(&self) -> Value {
        let inner = self.shared.lock();
        json!({
            "arm": self.arm_endpoint(),
            "aad": self.aad_endpoint(),
            "tenantId": self.topology.tenant_id,
            "subscriptionId": self.topology.subscription_id,
            "resourceGroup": self.topology.resource_group,
            "armTls": self.arm_endpoint_tls(),
            "aadTls": self.arm_endpoint_tls(),
            "caCertPath": self.ca_path.as_ref().map(|p| p.display().to_string()),
            "imds": self.node_addrs.iter().map(|(n, a)| (n.clone(), json!(a.to_string()))).collect::<serde_json::Map<_, _>>(),
            "identities": inner.identities.values().map(|r| json!({
                "name": r.name, "resourceID": r.resource_id, "clientID": r.client_id, "principalID": r.principal_id,
            })).collect::<Vec<_>>(),
            "servicePrincipals": inner.service_principals.values().map(|sp| json!({
                "clientID": sp.client_id,
                "tenantIDs": sp.tenants,
                "secret": sp.secret,
                "certificateThumbprint": sp.certificate.as_ref().map(|(t, _)| t.clone()),
            })).collect::<Vec<_>>(),
        })
    }

    /// Stops every listener (in-flight requests are dropped).
    pub async fn shutdown(self) {
        self.shared.stopping.cancel();
        self.server.stop(false).await;
        if let Some(dir) = self.ca_path.as_ref().and_then(|p| p.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn random_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
