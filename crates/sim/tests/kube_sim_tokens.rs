//! Service-account tokens from the Kubernetes simulator, judged by the real `kubectl create
//! token` (which sends its TokenRequest in protobuf) and by kube-rs: the API server's rules
//! (minimum lifetime, the bound pod must exist, run as the service account and have the uid
//! named), the real claim layout, and the issuer's discovery document and key set, against
//! which every token verifies.

use std::time::Duration;

use aad_pod_identity_sim::kube::KubeSimConfig;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const EXCHANGE: &str = "api://AzureADTokenExchange";

mod support;
use support::kubectl::KubectlEnv as Env;

async fn start() -> Env {
    Env::start(KubeSimConfig::default(), "kube-sim-tokens").await
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// Verifies `token` as a relying party would: discovery document from the issuer, key set
/// from its `jwks_uri`, signature, issuer and audience.
async fn verify(issuer: &str, token: &str, audience: &str) -> Result<Value, String> {
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
            let status = r.status();
            let body = r.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{url}: {status}"));
            }
            serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())
        }
    };
    let discovery = get(format!("{issuer}/.well-known/openid-configuration")).await?;
    assert_eq!(discovery["issuer"], issuer);
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(get(discovery["jwks_uri"].as_str().unwrap().to_string()).await?)
            .map_err(|e| e.to_string())?;
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let jwk = jwks
        .find(header.kid.as_deref().unwrap_or(""))
        .ok_or("kid not in the key set")?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[audience]);
    v.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?,
        &v,
    )
    .map(|d| d.claims)
    .map_err(|e| e.to_string())
}

async fn running_pod(client: &kube::Client, ns: &str, name: &str, sa: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "app"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    for _ in 0..200 {
        let p = pods.get(name).await.unwrap();
        if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("pod {name} was not scheduled");
}

#[tokio::test]
async fn kubectl_create_token_gets_a_pod_bound_token_that_verifies_against_the_issuer() {
    let env = start().await;
    let client = env.sim.client().await.unwrap();
    let (ok, _, err) = env.run(&["create", "serviceaccount", "workload"]).await;
    assert!(ok, "{err}");
    let pod = running_pod(&client, "default", "app", "workload").await;
    let uid = pod.metadata.uid.clone().unwrap();
    let node = pod.spec.unwrap().node_name.unwrap();

    let (ok, token, err) = env
        .run(&[
            "create",
            "token",
            "workload",
            "--audience",
            EXCHANGE,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "app",
            "--bound-object-uid",
            &uid,
            "--duration",
            "10m",
        ])
        .await;
    assert!(ok, "{err}");
    let c = verify(env.sim.issuer(), &token, EXCHANGE)
        .await
        .expect("the token verifies against the issuer's published key");
    assert_eq!(c["sub"], "system:serviceaccount:default:workload");
    assert_eq!(c["aud"], json!([EXCHANGE]));
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
    assert_eq!(c["nbf"], c["iat"]);
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()));
    let k = &c["kubernetes.io"];
    assert_eq!(k["namespace"], "default");
    assert_eq!(k["serviceaccount"]["name"], "workload");
    assert!(
        k["serviceaccount"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    assert_eq!(k["pod"], json!({"name": "app", "uid": uid}));
    assert_eq!(k["node"]["name"], node.as_str());
    // A token is for its own audience only.
    assert!(
        verify(env.sim.issuer(), &token, "https://kubernetes.default.svc")
            .await
            .is_err()
    );

    // Without an audience the API server's own (its issuer) is used; the default lifetime is 1h.
    let (ok, token, err) = env.run(&["create", "token", "workload"]).await;
    assert!(ok, "{err}");
    let c = claims(&token);
    assert_eq!(c["aud"], json!([env.sim.issuer()]));
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3600
    );
    assert!(c["kubernetes.io"].get("pod").is_none());

    // A new namespace has its `default` service account, as the service-account controller
    // makes it, so a token for it can be asked at once.
    let (ok, _, err) = env.run(&["create", "namespace", "team-b"]).await;
    assert!(ok, "{err}");
    let mut token = String::new();
    for _ in 0..100 {
        let (ok, out, _) = env
            .run(&["create", "token", "default", "-n", "team-b"])
            .await;
        if ok {
            token = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        claims(&token)["sub"],
        "system:serviceaccount:team-b:default"
    );
    env.stop().await;
}

#[tokio::test]
async fn token_requests_a_real_api_server_refuses_are_refused() {
    let env = start().await;
    let client = env.sim.client().await.unwrap();
    for sa in ["workload", "other"] {
        let (ok, _, err) = env.run(&["create", "serviceaccount", sa]).await;
        assert!(ok, "{err}");
    }
    let pod = running_pod(&client, "default", "app", "workload").await;
    let uid = pod.metadata.uid.clone().unwrap();

    // Shorter than ten minutes.
    let (ok, _, err) = env
        .run(&["create", "token", "workload", "--duration", "5m"])
        .await;
    assert!(!ok);
    assert!(
        err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );
    // No such service account.
    let (ok, _, err) = env.run(&["create", "token", "nobody"]).await;
    assert!(!ok);
    assert!(
        err.contains(r#"serviceaccounts "nobody" not found"#),
        "{err}"
    );
    // No such pod.
    let (ok, _, err) = env
        .run(&[
            "create",
            "token",
            "workload",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "ghost",
        ])
        .await;
    assert!(!ok);
    assert!(err.contains(r#"pods "ghost" not found"#), "{err}");
    // A pod running as another service account.
    let (ok, _, err) = env
        .run(&[
            "create",
            "token",
            "other",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "app",
        ])
        .await;
    assert!(!ok);
    assert!(
        err.contains("to pod running with different serviceaccount name"),
        "{err}"
    );

    // Through kube-rs: a stale uid is a conflict.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let request = |uid: &str, seconds: i64| TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![EXCHANGE.into()],
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some("app".into()),
                uid: Some(uid.into()),
            }),
        },
        ..TokenRequest::default()
    };
    let err = sas
        .create_token_request("workload", &PostParams::default(), &request("0000", 600))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("does not match the UID in record"),
                "{}",
                s.message
            );
        }
        other => panic!("expected a 409, got {other}"),
    }
    let got = sas
        .create_token_request("workload", &PostParams::default(), &request(&uid, 600))
        .await
        .unwrap();
    let status = got.status.expect("status holds the token");
    assert_eq!(
        claims(&status.token)["kubernetes.io"]["pod"]["uid"],
        uid.as_str()
    );
    // An object kind a token cannot be bound to.
    let mut bad = request(&uid, 600);
    bad.spec.bound_object_ref.as_mut().unwrap().kind = Some("ConfigMap".into());
    let err = sas
        .create_token_request("workload", &PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400 && s.message.contains("cannot bind token to object of type")),
        "{err}"
    );
    env.stop().await;
}
