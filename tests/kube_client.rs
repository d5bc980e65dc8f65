//! A `kube::Client` can be built with the crate's TLS setup. kube and azure_core each bring a
//! rustls crypto provider; if two were compiled in, building a client would panic at run time
//! ("Could not automatically determine the process-level CryptoProvider"). This test keeps that
//! from ever shipping.

#[tokio::test]
async fn a_kube_client_with_tls_can_be_constructed_and_used() {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(
        r"
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:9
    insecure-skip-tls-verify: true
users:
- name: u
  user:
    token: not-a-real-token
contexts:
- name: ctx
  context: {cluster: c, user: u}
current-context: ctx
",
    )
    .unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).expect("client construction must not fail");
    // Port 9 on loopback refuses connections: the request fails cleanly instead of panicking
    // in the TLS layer.
    let err = client.apiserver_version().await.unwrap_err();
    assert!(!err.to_string().is_empty());
}
