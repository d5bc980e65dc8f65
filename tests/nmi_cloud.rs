//! NMI with its real token source against the Azure simulator and the Kubernetes simulator:
//! type-0 identities come from the node's metadata service (only when assigned to the node's
//! scale set), type-1 service principals from Azure AD with the Secret the AzureIdentity names,
//! with auxiliary tenants answered as an array, as the original does; type-2 service principals
//! with the PKCS#12 certificate and password from their Secret.

mod nmi_support;

use aad_pod_identity::actors::nmi::cloud_source::CloudTokenSource;
use aad_pod_identity::crd::{AssignedState, IdentityType, SecretRef};
use aad_pod_identity::nmi::{Nmi, NmiSettings};
use aad_pod_identity_sim::azure::{AzureSim, AzureSimConfig};
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig};
use aad_pod_identity_sim::topology::Topology;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use nmi_support::*;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sources_answer_assigned_identities_and_service_principals() {
    let topology = Topology::sized(1, 1, 0, 2);
    let node = topology.nodes()[0].name.clone();
    let azure = AzureSim::start(
        &topology,
        AzureSimConfig {
            preassigned: vec!["identity-0".into()],
            ..AzureSimConfig::default()
        },
    )
    .await
    .unwrap();
    let kube_sim = KubeSim::start(KubeSimConfig {
        topology: topology.clone(),
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let client = kube_sim.client().await.unwrap();

    let tenant = azure.tenant_id().to_string();
    let sp = azure.add_service_principal_secret(&[&tenant, "aux-tenant"], "s3cret-value");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sp-secret", "namespace": "default"},
        "data": {"clientsecret": "czNjcmV0LXZhbHVl"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let imds = azure.imds_addr(&node).unwrap();
    let mut settings: NmiSettings = settings(imds);
    settings.node = node.clone();
    let source = CloudTokenSource::new(
        &imds.to_string(),
        client.clone(),
        azure.aad_endpoint(),
        Duration::from_secs(10),
    )
    .unwrap();
    let metrics = aad_pod_identity::metrics::Metrics::new();
    let nmi = Arc::new(Nmi::new(&settings, Arc::new(source), &metrics).unwrap());
    let l = TcpListener::bind(settings.listen).unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(aad_pod_identity::http::nmi::serve(l, Arc::clone(&nmi.http), 1).unwrap());

    let ids = azure.identities();
    let assigned_id = ids.iter().find(|i| i.name == "identity-0").unwrap();
    let unassigned_id = ids.iter().find(|i| i.name == "identity-1").unwrap();
    let mut pod_on_node = pod("default", "web", "127.0.9.2");
    pod_on_node.spec.as_mut().unwrap().node_name = Some(node.clone());
    nmi.pods.apply(&pod_on_node);
    let index = nmi.assignments.as_ref().unwrap();
    let aai_for = |name: &str, client_id: &str, resource_id: &str, type_: IdentityType| {
        let mut id = identity("default", name, client_id, type_);
        id.spec.resource_id = resource_id.to_string();
        if type_ == IdentityType::ServicePrincipal {
            id.spec.tenant_id = tenant.clone();
            id.spec.client_password = SecretRef {
                name: "sp-secret".into(),
                namespace: "default".into(),
            };
            id.spec.ad_endpoint = azure.aad_endpoint();
            id.spec.auxiliary_tenant_ids = vec!["aux-tenant".into()];
        }
        let mut a = assigned("default", "web", &id, AssignedState::Assigned);
        a.spec.node_name = node.clone();
        index.apply(&a);
        id
    };
    aai_for(
        "uami-0",
        &assigned_id.client_id,
        &assigned_id.resource_id,
        IdentityType::UserAssignedMsi,
    );
    aai_for(
        "uami-1",
        &unassigned_id.client_id,
        &unassigned_id.resource_id,
        IdentityType::UserAssignedMsi,
    );
    let mut sp_id = aai_for("sp", &sp.client_id, "", IdentityType::ServicePrincipal);

    let c = client_from("127.0.9.2");
    let get = |query: String| {
        let c = c.clone();
        let url = format!(
            "{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&{query}"
        );
        async move {
            let r = c.get(url).header("Metadata", "true").send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    // Type 0, assigned to the node's scale set: the metadata service's token.
    let (status, body) = get(format!("client_id={}", assigned_id.client_id)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let claims = azure
        .decode_token(v["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims.appid, assigned_id.client_id);
    assert_eq!(claims.aud, "https://vault.azure.net");
    // object_id is matched against the token's oid.
    let (status, body) = get(format!("object_id={}", assigned_id.principal_id)).await;
    assert_eq!(status, 200, "{body}");

    // Type 0 bound to the pod but not on the scale set: the metadata service refuses; 403.
    let (status, body) = get(format!("client_id={}", unassigned_id.client_id)).await;
    assert_eq!(status, 403, "{body}");

    // Type 1 with two tenants: an array of two tokens from Azure AD.
    let (status, body) = get(format!("client_id={}", sp.client_id)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tokens = v.as_array().expect("auxiliary tenants give an array");
    assert_eq!(tokens.len(), 2);
    let tids: Vec<String> = tokens
        .iter()
        .map(|t| {
            azure
                .decode_token(t["access_token"].as_str().unwrap())
                .unwrap()
                .tid
        })
        .collect();
    assert_eq!(tids, [tenant.clone(), "aux-tenant".to_string()]);
    assert!(!body.contains("s3cret-value"));

    // Type 2: a PKCS#12 certificate and its password from the Secret.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["nmi-test-sp".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_der = cert.der().to_vec();
    let sp2 = azure
        .add_service_principal_certificate(&[&tenant], &cert_der)
        .unwrap();
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        "sp",
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            "sp",
            p12_keystore::PrivateKey::from_der(&key.serialize_der()).unwrap(),
            [p12_keystore::Certificate::from_der(&cert_der).unwrap()],
        )),
    );
    let p12 = store.writer("p12-password").write().unwrap();
    let cert_secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("sp-cert".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        data: Some(
            [
                ("certificate".to_string(), k8s_openapi::ByteString(p12)),
                (
                    "password".to_string(),
                    k8s_openapi::ByteString(b"p12-password".to_vec()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &cert_secret)
        .await
        .unwrap();
    let mut cert_id = identity(
        "default",
        "sp-cert",
        &sp2.client_id,
        IdentityType::ServicePrincipalCertificate,
    );
    cert_id.spec.tenant_id = tenant.clone();
    cert_id.spec.ad_endpoint = azure.aad_endpoint();
    cert_id.spec.client_password = SecretRef {
        name: "sp-cert".into(),
        namespace: "default".into(),
    };
    let mut a = assigned("default", "web", &cert_id, AssignedState::Assigned);
    a.spec.node_name = node.clone();
    index.apply(&a);
    let (status, body) = get(format!("client_id={}", sp2.client_id)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let claims = azure
        .decode_token(v["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims.appid, sp2.client_id);

    // A service principal whose Secret is missing is refused (403), naming the Secret only.
    sp_id.metadata.name = Some("sp-broken".into());
    sp_id.spec.client_id = "broken-client".into();
    sp_id.spec.client_password.name = "no-such-secret".into();
    let mut a = assigned("default", "web", &sp_id, AssignedState::Assigned);
    a.spec.node_name = node.clone();
    index.apply(&a);
    let (status, body) = get("client_id=broken-client".into()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("default/no-such-secret"), "{body}");

    kube_sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_principal_may_use_neither_another_namespaces_secret_nor_a_foreign_authority() {
    let topology = Topology::sized(1, 1, 0, 1);
    let node = topology.nodes()[0].name.clone();
    let azure = AzureSim::start(&topology, AzureSimConfig::default())
        .await
        .unwrap();
    let kube_sim = KubeSim::start(KubeSimConfig {
        topology: topology.clone(),
        run_cluster: false,
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let client = kube_sim.client().await.unwrap();
    let tenant = azure.tenant_id().to_string();
    let sp = azure.add_service_principal_secret(&[&tenant], "victims-secret");
    for ns in ["team", "victim"] {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let _ = namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
                }))
                .unwrap(),
            )
            .await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "sp-secret", "namespace": ns},
                    // base64("victims-secret")
                    "data": {"clientsecret": "dmljdGltcy1zZWNyZXQ="}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    // A stand-in for an attacker's authority: it records every connection it gets.
    let thief = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thief_addr = thief.local_addr().unwrap();
    let stolen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let stolen = Arc::clone(&stolen);
        tokio::spawn(async move {
            while let Ok((_s, _)) = thief.accept().await {
                stolen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }

    let imds = azure.imds_addr(&node).unwrap();
    let mut settings: NmiSettings = settings(imds);
    settings.node = node.clone();
    let source = CloudTokenSource::new(
        &imds.to_string(),
        client.clone(),
        azure.aad_endpoint(),
        Duration::from_secs(10),
    )
    .unwrap();
    let metrics = aad_pod_identity::metrics::Metrics::new();
    let nmi = Arc::new(Nmi::new(&settings, Arc::new(source), &metrics).unwrap());
    let l = TcpListener::bind(settings.listen).unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(aad_pod_identity::http::nmi::serve(l, Arc::clone(&nmi.http), 1).unwrap());
    let mut p = pod("team", "app", "127.0.9.12");
    p.spec.as_mut().unwrap().node_name = Some(node.clone());
    nmi.pods.apply(&p);
    let index = nmi.assignments.as_ref().unwrap();
    let bind = |name: &str, client_id: &str, secret_ns: &str, endpoint: String| {
        let mut id = identity("team", name, client_id, IdentityType::ServicePrincipal);
        id.spec.tenant_id = tenant.clone();
        id.spec.client_password = SecretRef {
            name: "sp-secret".into(),
            namespace: secret_ns.into(),
        };
        id.spec.ad_endpoint = endpoint;
        let mut a = assigned("team", "app", &id, AssignedState::Assigned);
        a.spec.node_name = node.clone();
        index.apply(&a);
    };
    bind("cross-ns", "client-cross", "victim", azure.aad_endpoint());
    bind(
        "foreign-https",
        "client-https",
        "team",
        "https://login.evil.example/".into(),
    );
    bind(
        "foreign-loopback",
        "client-loop",
        "team",
        format!("http://{thief_addr}/"),
    );
    bind(
        "lookalike",
        "client-look",
        "team",
        "https://login.microsoftonline.com.evil.example/".into(),
    );
    bind("own", &sp.client_id, "team", azure.aad_endpoint());
    let c = client_from("127.0.9.12");
    let get = |client_id: String| {
        let c = c.clone();
        let url = format!(
            "{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id={client_id}"
        );
        async move {
            let r = c.get(url).header("Metadata", "true").send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let aad_requests = || {
        azure
            .request_log()
            .iter()
            .filter(|r| r.node.is_none() && r.path.contains("oauth2"))
            .count()
    };
    for (cid, why) in [
        ("client-cross", "may not use Secret victim/sp-secret"),
        ("client-https", "is not a known Azure AD authority"),
        ("client-loop", "is not a known Azure AD authority"),
        ("client-look", "is not a known Azure AD authority"),
    ] {
        let (status, body) = get(cid.to_string()).await;
        assert_eq!(status, 403, "{cid}: {body}");
        assert!(body.contains(why), "{cid}: {body}");
        assert!(!body.contains("victims-secret"), "{body}");
    }
    assert_eq!(aad_requests(), 0, "a refused identity reached Azure AD");
    assert_eq!(
        stolen.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "NMI connected to the foreign authority"
    );
    // The same service principal with its own namespace's Secret and the real authority works.
    let (status, body) = get(sp.client_id.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(aad_requests(), 1);
    kube_sim.shutdown().await;
    azure.shutdown().await;
}

/// NMI names itself as the original does on every call (`aad-pod-identity/NMI/…` with
/// `--custom-user-agent`): to the metadata service, Azure AD and the API server. And the
/// original's `kubernetes_api_operations_errors_count` counts what failed there: a Secret that
/// cannot be read (`get_secret`) and a pod list or watch the API server refused (`get_pod_list`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmi_names_itself_on_every_call_and_counts_failed_kubernetes_reads() {
    use aad_pod_identity::actors::nmi::identity::ResolvedIdentity;
    use aad_pod_identity::actors::nmi::pods::PodIndex;
    use aad_pod_identity::actors::nmi::source::TokenSource;
    use aad_pod_identity::kube_client::{ClientOptions, connect};
    use aad_pod_identity::version::{Component, user_agent};

    let topology = Topology::sized(1, 1, 0, 1);
    let node = topology.nodes()[0].name.clone();
    let azure = AzureSim::start(
        &topology,
        AzureSimConfig {
            preassigned: vec!["identity-0".into()],
            ..AzureSimConfig::default()
        },
    )
    .await
    .unwrap();
    let kube_sim = KubeSim::start(KubeSimConfig {
        topology: topology.clone(),
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "nmi-ua-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    kube_sim.write_kubeconfig(&kubeconfig).unwrap();
    let ua = user_agent(Component::Nmi, Some("team-a"));
    let client = connect(
        Some(&kubeconfig),
        &ClientOptions {
            user_agent: ua.clone(),
            qps: None,
        },
    )
    .await
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let tenant = azure.tenant_id().to_string();
    let sp = azure.add_service_principal_secret(&[&tenant], "s3cret-value");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sp-secret", "namespace": "default"},
        "data": {"clientsecret": "czNjcmV0LXZhbHVl"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let metrics = aad_pod_identity::metrics::Metrics::new();
    let imds = azure.imds_addr(&node).unwrap();
    let source = CloudTokenSource::new(
        &imds.to_string(),
        client.clone(),
        azure.aad_endpoint(),
        Duration::from_secs(10),
    )
    .unwrap()
    .with_user_agent(&ua)
    .with_metrics(&metrics);
    let fetch = |id: &aad_pod_identity::crd::AzureIdentity| {
        ResolvedIdentity::new(id, "default", AssignedState::Assigned, true)
            .token_request("https://vault.azure.net")
    };

    let uami = azure
        .identities()
        .into_iter()
        .find(|i| i.name == "identity-0")
        .unwrap();
    let mut msi = identity(
        "default",
        "uami",
        &uami.client_id,
        IdentityType::UserAssignedMsi,
    );
    msi.spec.resource_id = uami.resource_id.clone();
    assert_eq!(source.fetch(&fetch(&msi)).await.unwrap().status, 200);

    let mut sp_id = identity(
        "default",
        "sp",
        &sp.client_id,
        IdentityType::ServicePrincipal,
    );
    sp_id.spec.tenant_id = tenant.clone();
    sp_id.spec.ad_endpoint = azure.aad_endpoint();
    sp_id.spec.client_password = SecretRef {
        name: "sp-secret".into(),
        namespace: "default".into(),
    };
    assert_eq!(source.fetch(&fetch(&sp_id)).await.unwrap().status, 200);

    let log = azure.request_log();
    assert!(
        log.iter().any(|r| r.path.contains("oauth2")),
        "Azure AD was asked"
    );
    assert!(
        log.iter().any(|r| r.path.contains("metadata")),
        "the metadata service was asked"
    );
    for r in &log {
        assert_eq!(r.user_agent, ua, "{} {}", r.method, r.path);
    }
    let agents = kube_sim.requests_by_user_agent();
    assert!(agents.contains_key(&ua), "{:?}", agents.keys());

    // A Secret that is not there: counted once under the original's name.
    sp_id.spec.client_password.name = "no-such-secret".into();
    assert!(source.fetch(&fetch(&sp_id)).await.is_err());
    let text = metrics.encode();
    assert!(
        text.contains(r#"aadpodidentity_kubernetes_api_operations_errors_count{operation_type="get_secret"} 1"#),
        "{text}"
    );

    // The pod list refused twice by the API server: counted, and the watch still syncs.
    kube_sim.fail_next(2, 500);
    let pods = Arc::new(PodIndex::new(node.clone()));
    let errors = metrics
        .kubernetes_api_operations_errors_count
        .with_label_values(&["get_pod_list"]);
    let watch = tokio::spawn(aad_pod_identity::actors::nmi::watchers::watch_pods(
        client,
        node,
        Arc::clone(&pods),
        Arc::new(tokio::sync::Notify::new()),
        Some(errors.clone()),
    ));
    eventually("the pod watch synced after two refused lists", || {
        pods.is_synced()
    })
    .await;
    assert_eq!(errors.get(), 2);
    watch.abort();
    kube_sim.shutdown().await;
    azure.shutdown().await;
}
