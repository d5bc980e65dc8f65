//! A PKCS#12 (PFX) reader for service-principal certificates (AzureIdentity type 2): the
//! private key and its certificate from the bundle in the identity's Secret.
//!
//! Only what a client assertion needs is read: the MAC is verified with the password (so a
//! wrong password is told apart from a damaged file), the bags are decrypted, and the PKCS#8
//! key and the certificate that belongs to it (same `localKeyId`, else the first) come out as
//! DER. Both the modern encryption OpenSSL 3 writes (PBES2: PBKDF2 with AES-CBC) and the legacy
//! PKCS#12 PBE many PFX files still use (SHA-1 with 3DES or RC2) are read. Everything is
//! bounded: a hostile bundle cannot ask for more than [`MAX_ITERATIONS`] rounds of a key
//! derivation, and malformed input is an error, never a panic. Key material is never logged
//! and [`Bundle`]'s `Debug` shows none of it.
//!
//! Built on RustCrypto's ASN.1 types (`pkcs12`, `cms`, `der`), its PKCS#12 key derivation and
//! `pkcs5` for PBES2; no certificate parser is involved (the certificate is passed on as bytes).

use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt as _, InnerIvInit as _, KeyInit as _, KeyIvInit as _};
use der::asn1::{ContextSpecific, ObjectIdentifier, OctetString};
use der::{Decode as _, Encode as _};
use hmac::Mac as _;
use pkcs8::spki::AlgorithmIdentifierOwned;
use pkcs12::cms::content_info::ContentInfo;
use pkcs12::cms::encrypted_data::EncryptedData;
use pkcs12::kdf::Pkcs12KeyType;
use pkcs12::pbe_params::{EncryptedPrivateKeyInfo, Pkcs12PbeParams};
use pkcs12::{CertBag, Pfx, SafeBag};

/// Most rounds of a key derivation a bundle may ask for (OpenSSL writes 2048; OWASP's
/// recommendation for PBKDF2-SHA256 is 600 000).
pub const MAX_ITERATIONS: u32 = 2_000_000;

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
const ID_X509_CERTIFICATE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.22.1");
const ID_LOCAL_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.21");
const ID_PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA224: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.4");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// What is wrong with a bundle.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The bytes are not a PKCS#12 bundle (or a part of it does not decode).
    #[error("not a valid PKCS#12 bundle: {what} does not decode ({reason})")]
    Malformed {
        /// The part that failed.
        what: &'static str,
        /// The decoder's complaint (no content of the bundle).
        reason: String,
    },
    /// The MAC does not match: the password is wrong (or the bundle was altered).
    #[error("the PKCS#12 password is wrong (the bundle's MAC does not verify)")]
    WrongPassword,
    /// Decryption failed although there is no MAC to check the password against.
    #[error("cannot decrypt the PKCS#12 bundle: wrong password or damaged bundle")]
    Undecryptable,
    /// An algorithm this reader does not implement.
    #[error("unsupported algorithm in the PKCS#12 bundle: {0}")]
    Unsupported(String),
    /// The bundle asks for more key-derivation rounds than [`MAX_ITERATIONS`].
    #[error(
        "the PKCS#12 bundle asks for {0} key-derivation rounds (at most {MAX_ITERATIONS} are accepted)"
    )]
    TooManyIterations(i64),
    /// The password has characters PKCS#12 cannot encode (outside the Basic Multilingual Plane).
    #[error("the PKCS#12 password has characters outside the Basic Multilingual Plane")]
    PasswordNotEncodable,
    /// No private key in the bundle.
    #[error("the PKCS#12 bundle holds no private key")]
    NoPrivateKey,
    /// No certificate in the bundle.
    #[error("the PKCS#12 bundle holds no certificate")]
    NoCertificate,
}

fn malformed(what: &'static str) -> impl FnOnce(der::Error) -> Error {
    move |e| Error::Malformed {
        what,
        reason: e.kind().to_string(),
    }
}

/// The private key and its certificate from a bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// The key's certificate, DER.
    pub certificate: Vec<u8>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field(
                "key_pkcs8",
                &format_args!("<{} bytes>", self.key_pkcs8.len()),
            )
            .field(
                "certificate",
                &format_args!("<{} bytes>", self.certificate.len()),
            )
            .finish()
    }
}

/// A password in the two encodings PKCS#12 uses: BMPString with its terminator for the
/// PKCS#12 key derivation, UTF-8 for PBES2.
struct Password<'a> {
    utf8: &'a str,
    bmp: Vec<u8>,
}

impl<'a> Password<'a> {
    fn new(utf8: &'a str) -> Result<Self, Error> {
        let mut bmp = Vec::with_capacity(utf8.len() * 2 + 2);
        for c in utf8.encode_utf16() {
            if (0xD800..0xE000).contains(&c) {
                return Err(Error::PasswordNotEncodable);
            }
            bmp.extend_from_slice(&c.to_be_bytes());
        }
        bmp.extend_from_slice(&[0, 0]);
        Ok(Self { utf8, bmp })
    }
}

/// Reads the private key and its certificate from `data`, protected by `password`.
///
/// # Errors
/// [`Error::WrongPassword`] when the MAC does not verify with `password`; [`Error::Malformed`]
/// for bytes that are not a bundle; the other variants say what else is missing or refused.
pub fn read(data: &[u8], password: &str) -> Result<Bundle, Error> {
    let pfx = Pfx::from_der(data).map_err(malformed("PFX"))?;
    if pfx.auth_safe.content_type != ID_DATA {
        return Err(Error::Unsupported(format!(
            "authenticated safe of type {} (only password integrity is supported)",
            pfx.auth_safe.content_type
        )));
    }
    let auth_safe = pfx
        .auth_safe
        .content
        .decode_as::<OctetString>()
        .map_err(malformed("authenticated safe"))?;
    let mut password = Password::new(password)?;
    let verified = match &pfx.mac_data {
        Some(mac) => {
            verify_mac(mac, &mut password, auth_safe.as_bytes())?;
            true
        }
        None => false,
    };
    let decrypt_error = |e: Error| match e {
        Error::Undecryptable if verified => Error::Malformed {
            what: "encrypted content",
            reason: "decryption failed although the password is right".into(),
        },
        other => other,
    };
    let safes = Vec::<ContentInfo>::from_der(auth_safe.as_bytes())
        .map_err(malformed("authenticated safe contents"))?;
    let mut keys: Vec<(Option<Vec<u8>>, Vec<u8>)> = Vec::new();
    let mut certs: Vec<(Option<Vec<u8>>, Vec<u8>)> = Vec::new();
    for safe in safes {
        let contents = if safe.content_type == ID_DATA {
            safe.content
                .decode_as::<OctetString>()
                .map_err(malformed("safe contents"))?
                .into_bytes()
                .into_vec()
        } else if safe.content_type == ID_ENCRYPTED_DATA {
            let enc = safe
                .content
                .decode_as::<EncryptedData>()
                .map_err(malformed("encrypted safe contents"))?;
            let Some(ciphertext) = enc.enc_content_info.encrypted_content else {
                continue;
            };
            decrypt(
                &enc.enc_content_info.content_enc_alg,
                &password,
                ciphertext.as_bytes(),
            )
            .map_err(decrypt_error)?
        } else {
            // Public-key privacy (enveloped data) is not used for service-principal bundles.
            return Err(Error::Unsupported(format!(
                "safe contents of type {}",
                safe.content_type
            )));
        };
        let bags = Vec::<SafeBag>::from_der(&contents).map_err(malformed("safe bags"))?;
        for bag in bags {
            let id = local_key_id(&bag);
            let value = explicit_content(&bag.bag_value)?;
            if bag.bag_id == pkcs12::PKCS_12_KEY_BAG_OID {
                keys.push((id, value));
            } else if bag.bag_id == pkcs12::PKCS_12_PKCS8_KEY_BAG_OID {
                let info = EncryptedPrivateKeyInfo::from_der(&value)
                    .map_err(malformed("shrouded key bag"))?;
                let key = decrypt(
                    &info.encryption_algorithm,
                    &password,
                    info.encrypted_data.as_bytes(),
                )
                .map_err(decrypt_error)?;
                keys.push((id, key));
            } else if bag.bag_id == pkcs12::PKCS_12_CERT_BAG_OID {
                let cert = CertBag::from_der(&value).map_err(malformed("certificate bag"))?;
                if cert.cert_id == ID_X509_CERTIFICATE {
                    certs.push((id, cert.cert_value.into_bytes().into_vec()));
                }
            }
            // CRL and secret bags are of no use for a client assertion.
        }
    }
    let (key_id, key) = keys.into_iter().next().ok_or(Error::NoPrivateKey)?;
    // The key's own certificate when the bundle says which it is, else the first (the leaf,
    // as tools write it before the chain).
    let position = key_id
        .as_ref()
        .and_then(|k| certs.iter().position(|(id, _)| id.as_ref() == Some(k)))
        .unwrap_or(0);
    if certs.is_empty() {
        return Err(Error::NoCertificate);
    }
    let (_, certificate) = certs.swap_remove(position);
    // A PKCS#8 key must at least decode as one, so garbage decrypted by luck is caught here.
    pkcs8::PrivateKeyInfoRef::from_der(&key).map_err(malformed("private key"))?;
    Ok(Bundle {
        key_pkcs8: key,
        certificate,
    })
}

/// The content of a bag's `[0] EXPLICIT` value.
fn explicit_content(tlv: &[u8]) -> Result<Vec<u8>, Error> {
    let inner = ContextSpecific::<der::Any>::from_der(tlv).map_err(malformed("bag value"))?;
    inner.value.to_der().map_err(malformed("bag value"))
}

fn local_key_id(bag: &SafeBag) -> Option<Vec<u8>> {
    bag.bag_attributes
        .as_ref()?
        .iter()
        .find(|a| a.oid == ID_LOCAL_KEY_ID)?
        .values
        .iter()
        .next()
        .and_then(|v| v.decode_as::<OctetString>().ok())
        .map(|o| o.into_bytes().into_vec())
}

fn iterations(n: i64) -> Result<i32, Error> {
    if n < 1 {
        return Err(Error::Malformed {
            what: "iteration count",
            reason: format!("{n} is not positive"),
        });
    }
    if n > i64::from(MAX_ITERATIONS) {
        return Err(Error::TooManyIterations(n));
    }
    i32::try_from(n).map_err(|_| Error::TooManyIterations(n))
}

/// Checks the bundle's MAC with the password; for an empty password also as "no password"
/// (PKCS#12 tools disagree on how to encode it), keeping the encoding that verifies.
fn verify_mac(
    mac: &pkcs12::MacData,
    password: &mut Password<'_>,
    content: &[u8],
) -> Result<(), Error> {
    let rounds = iterations(i64::from(mac.iterations))?;
    let salt = mac.mac_salt.as_bytes();
    let expected = mac.mac.digest.as_bytes();
    let alg = mac.mac.algorithm.oid;
    let check = |bmp: &[u8]| -> Result<bool, Error> {
        macro_rules! with {
            ($d:ty) => {{
                let key = pkcs12::kdf::derive_key::<$d>(
                    bmp,
                    salt,
                    Pkcs12KeyType::Mac,
                    rounds,
                    <$d as sha2::digest::OutputSizeUser>::output_size(),
                );
                let mut m = <hmac::Hmac<$d>>::new_from_slice(&key)
                    .map_err(|_| Error::Unsupported("MAC key length".into()))?;
                m.update(content);
                Ok(m.verify_slice(expected).is_ok())
            }};
        }
        if alg == ID_SHA1 {
            with!(sha1::Sha1)
        } else if alg == ID_SHA224 {
            with!(sha2::Sha224)
        } else if alg == ID_SHA256 {
            with!(sha2::Sha256)
        } else if alg == ID_SHA384 {
            with!(sha2::Sha384)
        } else if alg == ID_SHA512 {
            with!(sha2::Sha512)
        } else {
            Err(Error::Unsupported(format!("MAC digest {alg}")))
        }
    };
    if check(&password.bmp)? {
        return Ok(());
    }
    if password.utf8.is_empty() && check(&[])? {
        password.bmp = Vec::new();
        return Ok(());
    }
    Err(Error::WrongPassword)
}

/// Decrypts `data` with the algorithm of `alg` (PBES2, or PKCS#12's SHA-1 PBE).
fn decrypt(
    alg: &AlgorithmIdentifierOwned,
    password: &Password<'_>,
    data: &[u8],
) -> Result<Vec<u8>, Error> {
    if alg.oid == ID_PBES2 {
        return decrypt_pbes2(alg, password, data);
    }
    let params = alg
        .parameters
        .as_ref()
        .ok_or_else(|| Error::Malformed {
            what: "PBE parameters",
            reason: "missing".into(),
        })?
        .decode_as::<Pkcs12PbeParams>()
        .map_err(malformed("PBE parameters"))?;
    let rounds = iterations(i64::from(params.iterations))?;
    let salt = params.salt.as_bytes();
    let derive = |kind, len| derive_key_bmp_bytes(&password.bmp, salt, kind, rounds, len);
    let plain = if alg.oid == pkcs12::PKCS_12_PBE_WITH_SHAAND3_KEY_TRIPLE_DES_CBC {
        let key = derive(Pkcs12KeyType::EncryptionKey, 24);
        let iv = derive(Pkcs12KeyType::Iv, 8);
        cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
            .map_err(|_| Error::Undecryptable)?
            .decrypt_padded_vec::<Pkcs7>(data)
    } else if alg.oid == pkcs12::PKCS_12_PBE_WITH_SHAAND2_KEY_TRIPLE_DES_CBC {
        let key = derive(Pkcs12KeyType::EncryptionKey, 16);
        let iv = derive(Pkcs12KeyType::Iv, 8);
        cbc::Decryptor::<des::TdesEde2>::new_from_slices(&key, &iv)
            .map_err(|_| Error::Undecryptable)?
            .decrypt_padded_vec::<Pkcs7>(data)
    } else if alg.oid == pkcs12::PKCS_12_PBEWITH_SHAAND40_BIT_RC2_CBC
        || alg.oid == pkcs12::PKCS_12_PBE_WITH_SHAAND128_BIT_RC2_CBC
    {
        let bits = if alg.oid == pkcs12::PKCS_12_PBEWITH_SHAAND40_BIT_RC2_CBC {
            40
        } else {
            128
        };
        let key = derive(Pkcs12KeyType::EncryptionKey, bits / 8);
        let iv = derive(Pkcs12KeyType::Iv, 8);
        let cipher = rc2::Rc2::new_with_eff_key_len(&key, bits);
        cbc::Decryptor::<rc2::Rc2>::inner_iv_slice_init(cipher, &iv)
            .map_err(|_| Error::Undecryptable)?
            .decrypt_padded_vec::<Pkcs7>(data)
    } else {
        return Err(Error::Unsupported(format!("encryption {}", alg.oid)));
    };
    plain.map_err(|_| Error::Undecryptable)
}

fn derive_key_bmp_bytes(
    bmp: &[u8],
    salt: &[u8],
    kind: Pkcs12KeyType,
    rounds: i32,
    len: usize,
) -> Vec<u8> {
    pkcs12::kdf::derive_key::<sha1::Sha1>(bmp, salt, kind, rounds, len)
}

fn decrypt_pbes2(
    alg: &AlgorithmIdentifierOwned,
    password: &Password<'_>,
    data: &[u8],
) -> Result<Vec<u8>, Error> {
    let der = alg.to_der().map_err(malformed("PBES2 parameters"))?;
    let scheme = pkcs5::EncryptionScheme::try_from(der.as_slice())
        .map_err(|e| Error::Unsupported(format!("PBES2 parameters ({e})")))?;
    let pkcs5::EncryptionScheme::Pbes2(params) = &scheme else {
        return Err(Error::Unsupported("PBES1".into()));
    };
    match &params.kdf {
        pkcs5::pbes2::Kdf::Pbkdf2(p) => {
            iterations(i64::from(p.iteration_count))?;
        }
        _ => {
            return Err(Error::Unsupported(
                "a PBES2 key derivation other than PBKDF2".into(),
            ));
        }
    }
    scheme
        .decrypt(password.utf8.as_bytes(), data)
        .map_err(|_| Error::Undecryptable)
}

#[cfg(test)]
#[path = "pfx_tests.rs"]
mod tests;
