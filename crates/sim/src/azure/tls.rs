//! HTTPS for the simulator's management listener: a fresh CA per run signs a certificate for
//! `127.0.0.1` and `localhost`; the CA's PEM goes to a file clients can trust. rustls runs on
//! the aws-lc-rs provider, chosen explicitly (the build carries no other).

use std::path::PathBuf;
use std::sync::Arc;

use super::Error;

/// A server config for loopback and the path of the CA PEM that verifies it.
pub(crate) fn loopback_server_config() -> Result<(rustls::ServerConfig, PathBuf), Error> {
    let err = |what: &str, e: &dyn std::fmt::Display| Error::Tls(format!("{what}: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(|e| err("CA key", &e))?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA params", &e))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "aad-pod-identity simulator CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| err("CA certificate", &e))?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().map_err(|e| err("server key", &e))?;
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(|e| err("server params", &e))?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| err("server certificate", &e))?;

    let dir = std::env::temp_dir().join(format!(
        "aad-pod-identity-azure-sim-{}",
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| err("CA directory", &e))?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).map_err(|e| err("CA file", &e))?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| err("server key DER", &e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key_der)
        .map_err(|e| err("server certificate chain", &e))?;
    Ok((config, ca_path))
}
