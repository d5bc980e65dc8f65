//! Bundles made by the `openssl` CLI in a fresh temp dir (nothing committed): the reader must
//! return exactly the key and certificate OpenSSL put in, for modern and legacy encryption.

use super::*;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const PASSWORD: &str = "pfx-test-pass";

/// Runs `openssl` with `args` (separated by spaces; no argument here contains one).
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is installed (it makes the test bundles)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temp dir with a test-only key and certificate (and a second, unrelated CA certificate),
/// plus their DER forms as OpenSSL writes them.
struct Material {
    dir: PathBuf,
    key_der: Vec<u8>,
    cert_der: Vec<u8>,
}

impl Drop for Material {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Material {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pfx-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (key, cert, cn) in [
            ("k.pem", "c.pem", "sp.pod-identity.test"),
            ("ca-k.pem", "ca.pem", "other-ca.test"),
        ] {
            openssl(
                &dir,
                &format!(
                    "req -x509 -newkey rsa:2048 -nodes -keyout {key} -out {cert} -days 1 -subj /CN={cn}"
                ),
            );
        }
        openssl(&dir, "x509 -in c.pem -outform DER -out c.der");
        openssl(
            &dir,
            "pkcs8 -topk8 -nocrypt -in k.pem -outform DER -out k.der",
        );
        Material {
            key_der: std::fs::read(dir.join("k.der")).unwrap(),
            cert_der: std::fs::read(dir.join("c.der")).unwrap(),
            dir,
        }
    }

    /// A bundle of the key, its certificate and the unrelated CA certificate, exported with
    /// `args` (extra `openssl pkcs12` options, separated by spaces).
    fn export(&self, name: &str, password: &str, args: &str) -> Vec<u8> {
        let out = format!("{name}.p12");
        openssl(
            &self.dir,
            &format!(
                "pkcs12 -export -inkey k.pem -in c.pem -certfile ca.pem -out {out} -passout pass:{password} {args}"
            ),
        );
        std::fs::read(self.dir.join(&out)).unwrap()
    }

    fn assert_reads(&self, p12: &[u8], password: &str) {
        let b = read(p12, password).expect("the bundle reads");
        assert!(b.key_pkcs8 == self.key_der, "the PKCS#8 key OpenSSL put in");
        assert!(
            b.certificate == self.cert_der,
            "the key's own certificate, not the CA's"
        );
    }
}

/// A modern bundle's bytes, made once per test process (for the property tests).
fn modern() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| Material::new().export("modern", PASSWORD, ""))
}

#[test]
fn an_openssl_3_default_bundle_pbes2_aes_256_and_a_sha256_mac_reads() {
    let m = Material::new();
    m.assert_reads(&m.export("modern", PASSWORD, ""), PASSWORD);
}

#[test]
fn legacy_bundles_sha1_pbe_with_rc2_and_3des_read() {
    let m = Material::new();
    let legacy = m.export("legacy", PASSWORD, "-legacy");
    m.assert_reads(&legacy, PASSWORD);
    let tdes = m.export(
        "tdes",
        PASSWORD,
        "-keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES -macalg sha1",
    );
    m.assert_reads(&tdes, PASSWORD);
    let rc2_128 = m.export(
        "rc2-128",
        PASSWORD,
        "-legacy -keypbe PBE-SHA1-2DES -certpbe PBE-SHA1-RC2-128",
    );
    m.assert_reads(&rc2_128, PASSWORD);
}

#[test]
fn other_pbes2_ciphers_macs_and_unencrypted_certificates_read() {
    let m = Material::new();
    let b = m.export(
        "aes128",
        PASSWORD,
        "-keypbe AES-128-CBC -certpbe NONE -macalg sha512",
    );
    m.assert_reads(&b, PASSWORD);
}

#[test]
fn an_empty_password_and_a_non_ascii_password_read() {
    let m = Material::new();
    m.assert_reads(&m.export("empty", "", ""), "");
    m.assert_reads(&m.export("umlaut", "pässwörd", ""), "pässwörd");
    m.assert_reads(
        &m.export("umlaut-legacy", "pässwörd", "-legacy"),
        "pässwörd",
    );
}

#[test]
fn a_wrong_password_is_told_apart_from_a_damaged_bundle() {
    let m = Material::new();
    assert_eq!(read(modern(), "wrong"), Err(Error::WrongPassword));
    let legacy = m.export("legacy-wrong", PASSWORD, "-legacy");
    assert_eq!(read(&legacy, ""), Err(Error::WrongPassword));
    let no_mac = m.export("nomac", PASSWORD, "-nomac");
    m.assert_reads(&no_mac, PASSWORD);
    assert!(
        matches!(
            read(&no_mac, "wrong"),
            Err(Error::Undecryptable | Error::Malformed { .. })
        ),
        "without a MAC a wrong password shows as failed decryption"
    );
}

#[test]
fn a_bundle_asking_for_absurd_key_derivation_rounds_is_refused_before_deriving() {
    let mut pfx = Pfx::from_der(modern()).unwrap();
    pfx.mac_data.as_mut().unwrap().iterations = i32::MAX;
    let e = read(&pfx.to_der().unwrap(), PASSWORD).unwrap_err();
    assert_eq!(e, Error::TooManyIterations(i64::from(i32::MAX)));
    pfx.mac_data.as_mut().unwrap().iterations = -1;
    assert!(matches!(
        read(&pfx.to_der().unwrap(), PASSWORD),
        Err(Error::Malformed {
            what: "iteration count",
            ..
        })
    ));
}

#[test]
fn a_certificate_credential_signs_with_a_legacy_bundle_and_debug_shows_no_key() {
    let m = Material::new();
    let legacy = m.export("legacy-cred", PASSWORD, "-legacy");
    crate::cloud::aad::CertificateCredential::from_pkcs12(&legacy, PASSWORD).unwrap();
    let b = read(&legacy, PASSWORD).unwrap();
    let shown = format!("{b:?}");
    assert!(shown.contains("bytes") && !shown.contains(&format!("{:?}", &b.key_pkcs8[..8])));
}

#[test]
fn a_cert_only_bundle_says_it_holds_no_private_key() {
    let m = Material::new();
    openssl(
        &m.dir,
        &format!("pkcs12 -export -nokeys -in c.pem -out nokey.p12 -passout pass:{PASSWORD}"),
    );
    let b = std::fs::read(m.dir.join("nokey.p12")).unwrap();
    assert_eq!(read(&b, PASSWORD), Err(Error::NoPrivateKey));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_an_error_not_a_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(read(&data, PASSWORD).is_err());
    }

    #[test]
    fn a_truncated_bundle_is_an_error(cut in 0usize..4096) {
        let full = modern();
        let cut = cut % full.len();
        prop_assert!(read(&full[..cut], PASSWORD).is_err());
    }

    #[test]
    fn a_flipped_bit_never_panics_nor_yields_another_key(at in any::<usize>(), bit in 0u8..8) {
        let mut data = modern().to_vec();
        let i = at % data.len();
        data[i] ^= 1 << bit;
        let original = read(modern(), PASSWORD).unwrap();
        // Any change is an error; a flip that changes nothing read may only give the same bundle.
        if let Ok(b) = read(&data, PASSWORD) {
            prop_assert_eq!(b, original);
        }
    }
}
