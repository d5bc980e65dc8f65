//! Just enough of the Kubernetes protobuf encoding to accept the bodies kubectl's typed
//! clients send for `kubectl create namespace|configmap|secret|serviceaccount`: the `k8s\0`
//! envelope (`runtime.Unknown`) around a Namespace, ConfigMap, Secret or ServiceAccount.
//! Other kinds are refused with 415 and a message saying to send JSON.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::meta::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// One decoded field value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(why: &str) -> ApiError {
    ApiError::bad_request(format!("invalid protobuf body: {why}"))
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| bad("truncated field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next (field number, value), or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ApiError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length too large"))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            _ => return Err(bad("unsupported wire type")),
        };
        Ok(Some((key >> 3, wire)))
    }
}

fn string(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("a string field is not UTF-8"))
}

/// A map entry (`key` = 1, `value` = 2); bytes values are base64-encoded as in JSON.
fn entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ApiError> {
    let mut r = Reader::new(b);
    let (mut k, mut v) = (String::new(), json!(""));
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Bytes(s)) => k = string(s)?,
            (2, Wire::Bytes(s)) if bytes_value => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(s));
            }
            (2, Wire::Bytes(s)) => v = json!(string(s)?),
            _ => {}
        }
    }
    Ok((k, v))
}

fn insert_entry(
    obj: &mut Map<String, Value>,
    field: &str,
    b: &[u8],
    bytes_value: bool,
) -> Result<(), ApiError> {
    let (k, v) = entry(b, bytes_value)?;
    obj.entry(field)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .map(|m| m.insert(k, v));
    Ok(())
}

fn push_string(obj: &mut Map<String, Value>, field: &str, b: &[u8]) -> Result<(), ApiError> {
    let s = string(b)?;
    if let Some(a) = obj.entry(field).or_insert_with(|| json!([])).as_array_mut() {
        a.push(json!(s));
    }
    Ok(())
}

fn owner_reference(b: &[u8]) -> Result<Value, ApiError> {
    let mut r = Reader::new(b);
    let mut o = Map::new();
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Bytes(s)) => o.insert("kind".into(), json!(string(s)?)),
            (3, Wire::Bytes(s)) => o.insert("name".into(), json!(string(s)?)),
            (4, Wire::Bytes(s)) => o.insert("uid".into(), json!(string(s)?)),
            (5, Wire::Bytes(s)) => o.insert("apiVersion".into(), json!(string(s)?)),
            (6, Wire::Varint(v)) => o.insert("controller".into(), json!(v != 0)),
            (7, Wire::Varint(v)) => o.insert("blockOwnerDeletion".into(), json!(v != 0)),
            _ => None,
        };
    }
    Ok(Value::Object(o))
}

/// `ObjectMeta`, keeping what a client may set (the server fills in the rest).
fn object_meta(b: &[u8]) -> Result<Value, ApiError> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Bytes(s)) => {
                m.insert("name".into(), json!(string(s)?));
            }
            (2, Wire::Bytes(s)) => {
                m.insert("generateName".into(), json!(string(s)?));
            }
            (3, Wire::Bytes(s)) => {
                m.insert("namespace".into(), json!(string(s)?));
            }
            (5, Wire::Bytes(s)) => {
                m.insert("uid".into(), json!(string(s)?));
            }
            (6, Wire::Bytes(s)) => {
                m.insert("resourceVersion".into(), json!(string(s)?));
            }
            (11, Wire::Bytes(s)) => insert_entry(&mut m, "labels", s, false)?,
            (12, Wire::Bytes(s)) => insert_entry(&mut m, "annotations", s, false)?,
            (13, Wire::Bytes(s)) => {
                let o = owner_reference(s)?;
                if let Some(a) = m
                    .entry("ownerReferences")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                {
                    a.push(o);
                }
            }
            (14, Wire::Bytes(s)) => push_string(&mut m, "finalizers", s)?,
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

fn local_object_reference(b: &[u8]) -> Result<Value, ApiError> {
    let mut r = Reader::new(b);
    let mut o = Map::new();
    while let Some((f, w)) = r.next()? {
        if let (1, Wire::Bytes(s)) = (f, w) {
            o.insert("name".into(), json!(string(s)?));
        }
    }
    Ok(Value::Object(o))
}

fn object(kind: &str, raw: &[u8]) -> Result<Value, ApiError> {
    let mut r = Reader::new(raw);
    let mut o = Map::new();
    while let Some((f, w)) = r.next()? {
        let Wire::Bytes(s) = w else {
            match (kind, f, w) {
                ("ConfigMap", 4, Wire::Varint(v)) | ("Secret", 5, Wire::Varint(v)) => {
                    o.insert("immutable".into(), json!(v != 0));
                }
                ("ServiceAccount", 4, Wire::Varint(v)) => {
                    o.insert("automountServiceAccountToken".into(), json!(v != 0));
                }
                _ => {}
            }
            continue;
        };
        match (kind, f) {
            (_, 1) => {
                o.insert("metadata".into(), object_meta(s)?);
            }
            ("Namespace", 2) => {
                let mut spec = Map::new();
                let mut sr = Reader::new(s);
                while let Some((sf, sw)) = sr.next()? {
                    if let (1, Wire::Bytes(x)) = (sf, sw) {
                        push_string(&mut spec, "finalizers", x)?;
                    }
                }
                o.insert("spec".into(), Value::Object(spec));
            }
            ("ConfigMap", 2) => insert_entry(&mut o, "data", s, false)?,
            ("ConfigMap", 3) => insert_entry(&mut o, "binaryData", s, true)?,
            ("Secret", 2) => insert_entry(&mut o, "data", s, true)?,
            ("Secret", 3) => {
                o.insert("type".into(), json!(string(s)?));
            }
            ("Secret", 4) => insert_entry(&mut o, "stringData", s, false)?,
            ("ServiceAccount", 2) => {
                let v = local_object_reference(s)?;
                if let Some(a) = o
                    .entry("secrets")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                {
                    a.push(v);
                }
            }
            ("ServiceAccount", 3) => {
                let v = local_object_reference(s)?;
                if let Some(a) = o
                    .entry("imagePullSecrets")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                {
                    a.push(v);
                }
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s envelope"))?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((tf, tw)) = t.next()? {
                    match (tf, tw) {
                        (1, Wire::Bytes(s)) => api_version = string(s)?,
                        (2, Wire::Bytes(s)) => kind = string(s)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(s)) => raw = s,
            _ => {}
        }
    }
    if !matches!(
        kind.as_str(),
        "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount"
    ) {
        let mut e = ApiError::unsupported_media_type("application/vnd.kubernetes.protobuf");
        e.message = format!(
            "the simulator accepts protobuf bodies only for Namespace, ConfigMap, Secret and ServiceAccount (got {kind:?}); send JSON"
        );
        return Err(e);
    }
    let mut obj = object(&kind, raw)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from((n << 3) | 2).unwrap()];
        out.push(u8::try_from(bytes.len()).unwrap());
        out.extend_from_slice(bytes);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let tm = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), field(1, &tm), field(2, raw)].concat()
    }

    #[test]
    fn a_secret_decodes_with_base64_data_and_labels() {
        let label = [field(1, b"app"), field(2, b"nmi")].concat();
        let meta = [
            field(1, b"sp-secret"),
            field(3, b"default"),
            field(11, &label),
        ]
        .concat();
        let data = [field(1, b"clientSecret"), field(2, b"s3cr3t")].concat();
        let raw = [field(1, &meta), field(2, &data), field(3, b"Opaque")].concat();
        let v = decode(&envelope("v1", "Secret", &raw)).unwrap();
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["metadata"]["name"], "sp-secret");
        assert_eq!(v["metadata"]["labels"]["app"], "nmi");
        assert_eq!(v["data"]["clientSecret"], "czNjcjN0");
        assert_eq!(v["type"], "Opaque");
    }

    #[test]
    fn other_kinds_and_garbage_are_refused() {
        let e = decode(&envelope("apps/v1", "Deployment", &[])).unwrap_err();
        assert_eq!(e.code, 415);
        assert_eq!(decode(b"not protobuf").unwrap_err().code, 400);
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code, 400);
        let mut trunc = envelope("v1", "Namespace", &field(1, &field(1, b"ns")));
        trunc.truncate(trunc.len() - 1);
        assert_eq!(decode(&trunc).unwrap_err().code, 400);
    }
}
