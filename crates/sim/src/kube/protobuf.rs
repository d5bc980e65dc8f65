//! The Kubernetes protobuf encoding of request bodies, as kubectl's typed clients send them
//! (`kubectl create deployment|job|cronjob|namespace|configmap|secret|serviceaccount|service`,
//! `kubectl create job --from=cronjob/...`, `kubectl debug --copy-to`, the DELETE bodies of
//! `kubectl drain --disable-eviction`) and as client-go programs do: the `k8s\0` envelope
//! (`runtime.Unknown`) around one object, turned into the JSON object it stands for.
//! Described kinds: v1 Namespace, ConfigMap, Secret, ServiceAccount, Pod, Service, Event,
//! Node; apps/v1 Deployment, DaemonSet, ReplicaSet; batch/v1 Job and CronJob (and
//! batch/v1beta1 CronJob); coordination.k8s.io/v1 Lease; policy/v1 (and v1beta1) Eviction;
//! authentication.k8s.io/v1 TokenRequest (`kubectl create token`);
//! DeleteOptions under any version. An envelope whose `contentType` is JSON is accepted too.
//!
//! The decoder is driven by the static message descriptors in `schema` (field number →
//! JSON name and value kind, taken from the `generated.proto` files of `k8s.io/api` and
//! `k8s.io/apimachinery`), so adding a kind is adding table rows, not code. It renders
//! values the way the Go types marshal to JSON: zero scalars of value fields are left out
//! (`omitempty`), pointer fields are kept, bytes become base64, `metav1.Time` an RFC 3339
//! string, `IntOrString` a number or a string, a `Quantity` its string. Unknown field numbers
//! are skipped. A kind without a descriptor is refused with 415 and a message saying to send
//! JSON; malformed input is a 400 naming what is wrong, never a panic, and nesting is
//! bounded by [`MAX_DEPTH`].

mod schema;

use base64::Engine;
use chrono::{DateTime, Datelike, SecondsFormat};
use serde_json::{Map, Value, json};

use self::schema::{Field, Kind, Message};
use super::meta::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// Deepest nesting of messages accepted (the described kinds need about 12).
pub const MAX_DEPTH: usize = 32;

/// One decoded field value.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed64,
    Fixed32,
}

impl Wire<'_> {
    fn name(self) -> &'static str {
        match self {
            Wire::Varint(_) => "varint",
            Wire::Bytes(_) => "length-delimited",
            Wire::Fixed64 => "fixed64",
            Wire::Fixed32 => "fixed32",
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(why: impl std::fmt::Display) -> ApiError {
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
        if key >> 3 == 0 {
            return Err(bad("field number 0"));
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length too large"))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            w => return Err(bad(format!("unsupported wire type {w}"))),
        };
        Ok(Some((key >> 3, wire)))
    }
}

fn string(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("a string field is not UTF-8"))
}

fn base64(b: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(b))
}

/// Protobuf `int32` and `int64` travel as the two's-complement bits in a varint.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
fn int32(v: u64) -> i64 {
    i64::from(v as u32 as i32)
}

#[allow(clippy::cast_possible_wrap)]
fn int64(v: u64) -> i64 {
    v as i64
}

fn wrong_wire(msg: &Message, field: &Field, wire: Wire<'_>) -> ApiError {
    bad(format!(
        "{}.{} cannot be {} (wire type mismatch)",
        msg.name,
        field.name,
        wire.name()
    ))
}

fn bytes_of<'a>(msg: &Message, field: &Field, wire: Wire<'a>) -> Result<&'a [u8], ApiError> {
    match wire {
        Wire::Bytes(b) => Ok(b),
        w => Err(wrong_wire(msg, field, w)),
    }
}

/// `metav1.Time` / `MicroTime`: `seconds` = 1, `nanos` = 2. An empty message is the zero
/// time, which Go renders as `null`.
fn time(b: &[u8], micros: bool) -> Result<Value, ApiError> {
    if b.is_empty() {
        return Ok(Value::Null);
    }
    let (mut secs, mut nanos) = (0i64, 0i64);
    let mut r = Reader::new(b);
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Varint(v)) => secs = int64(v),
            (2, Wire::Varint(v)) => nanos = int32(v),
            (1 | 2, _) => return Err(bad("a Time field has the wrong wire type")),
            _ => {}
        }
    }
    let nanos = u32::try_from(nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| bad(format!("a Time has nanos {nanos} out of range")))?;
    // metav1.Time keeps whole seconds; MicroTime keeps microseconds.
    let (nanos, format) = if micros {
        (nanos / 1000 * 1000, SecondsFormat::Micros)
    } else {
        (0, SecondsFormat::Secs)
    };
    // Go's JSON encoding of a time refuses years outside 0..=9999.
    let t = DateTime::from_timestamp(secs, nanos)
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or_else(|| bad(format!("a Time of {secs} seconds is out of range")))?;
    Ok(json!(t.to_rfc3339_opts(format, true)))
}

/// `resource.Quantity`: `string` = 1. The zero quantity renders as "0".
fn quantity(b: &[u8]) -> Result<Value, ApiError> {
    let mut s = String::from("0");
    let mut r = Reader::new(b);
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Bytes(x)) => s = string(x)?,
            (1, _) => return Err(bad("a Quantity field has the wrong wire type")),
            _ => {}
        }
    }
    Ok(json!(s))
}

/// `intstr.IntOrString`: `type` = 1 (0 int, 1 string), `intVal` = 2, `strVal` = 3.
fn int_or_string(b: &[u8]) -> Result<Value, ApiError> {
    let (mut kind, mut int, mut text) = (0u64, 0i64, String::new());
    let mut r = Reader::new(b);
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Varint(v)) => kind = v,
            (2, Wire::Varint(v)) => int = int32(v),
            (3, Wire::Bytes(x)) => text = string(x)?,
            (1..=3, _) => return Err(bad("an IntOrString field has the wrong wire type")),
            _ => {}
        }
    }
    match kind {
        0 => Ok(json!(int)),
        1 => Ok(json!(text)),
        k => Err(bad(format!("an IntOrString has type {k}"))),
    }
}

/// `runtime.RawExtension`: `raw` = 1, which must hold JSON here.
fn raw_extension(b: &[u8]) -> Result<Value, ApiError> {
    let mut raw: &[u8] = &[];
    let mut r = Reader::new(b);
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Bytes(x)) => raw = x,
            (1, _) => return Err(bad("a RawExtension field has the wrong wire type")),
            _ => {}
        }
    }
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(raw).map_err(|e| bad(format!("a RawExtension does not hold JSON: {e}")))
}

/// `metav1.Duration`: `duration` = 1 in nanoseconds, rendered like Go's `Duration.String`.
fn duration(b: &[u8]) -> Result<Value, ApiError> {
    let mut d = 0i64;
    let mut r = Reader::new(b);
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Varint(v)) => d = int64(v),
            (1, _) => return Err(bad("a Duration field has the wrong wire type")),
            _ => {}
        }
    }
    Ok(json!(go_duration(d)))
}

/// `whole.frac` with the fraction's trailing zeros dropped (`digits` wide before dropping).
fn with_fraction(whole: u64, frac: u64, digits: usize) -> String {
    if frac == 0 {
        return whole.to_string();
    }
    let f = format!("{frac:0digits$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// Go's `time.Duration.String`: `1h2m3.5s`, `1.5ms`, `0s`.
fn go_duration(d: i64) -> String {
    if d == 0 {
        return "0s".into();
    }
    let sign = if d < 0 { "-" } else { "" };
    let u = d.unsigned_abs();
    let body = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", with_fraction(u / 1_000, u % 1_000, 3))
    } else if u < 1_000_000_000 {
        format!("{}ms", with_fraction(u / 1_000_000, u % 1_000_000, 6))
    } else {
        let secs = u / 1_000_000_000;
        let s = format!("{}s", with_fraction(secs % 60, u % 1_000_000_000, 9));
        let (h, m) = (secs / 3600, secs / 60 % 60);
        if h > 0 {
            format!("{h}h{m}m{s}")
        } else if m > 0 {
            format!("{m}m{s}")
        } else {
            s
        }
    };
    format!("{sign}{body}")
}

/// A map entry (`key` = 1, `value` = 2), the value rendered per the map's kind.
fn map_entry(b: &[u8], kind: Kind) -> Result<(String, Value), ApiError> {
    let mut r = Reader::new(b);
    let mut k = String::new();
    let mut v = match kind {
        Kind::MapQuantity => json!("0"),
        _ => json!(""),
    };
    while let Some((f, w)) = r.next()? {
        match (f, w, kind) {
            (1, Wire::Bytes(s), _) => k = string(s)?,
            (2, Wire::Bytes(s), Kind::MapBytes) => v = base64(s),
            (2, Wire::Bytes(s), Kind::MapQuantity) => v = quantity(s)?,
            (2, Wire::Bytes(s), _) => v = json!(string(s)?),
            (1 | 2, _, _) => return Err(bad("a map entry has the wrong wire type")),
            _ => {}
        }
    }
    Ok((k, v))
}

/// The JSON value of one non-message field occurrence; `None` for a zero value the Go type
/// would leave out.
fn scalar(msg: &Message, field: &Field, wire: Wire<'_>) -> Result<Option<Value>, ApiError> {
    let varint = |w: Wire<'_>| match w {
        Wire::Varint(v) => Ok(v),
        w => Err(wrong_wire(msg, field, w)),
    };
    let keep = field.repeated;
    Ok(match field.kind {
        Kind::Str | Kind::OptStr => {
            let s = string(bytes_of(msg, field, wire)?)?;
            (keep || !s.is_empty() || matches!(field.kind, Kind::OptStr)).then(|| json!(s))
        }
        Kind::Bool | Kind::OptBool => {
            let b = varint(wire)? != 0;
            (keep || b || matches!(field.kind, Kind::OptBool)).then(|| json!(b))
        }
        Kind::I32 | Kind::OptI32 => {
            let n = int32(varint(wire)?);
            (keep || n != 0 || matches!(field.kind, Kind::OptI32)).then(|| json!(n))
        }
        Kind::I64 | Kind::OptI64 => {
            let n = int64(varint(wire)?);
            (keep || n != 0 || matches!(field.kind, Kind::OptI64)).then(|| json!(n))
        }
        Kind::Bytes => {
            let b = bytes_of(msg, field, wire)?;
            (keep || !b.is_empty()).then(|| base64(b))
        }
        Kind::Time => Some(time(bytes_of(msg, field, wire)?, false)?),
        Kind::MicroTime => Some(time(bytes_of(msg, field, wire)?, true)?),
        Kind::Quantity => Some(quantity(bytes_of(msg, field, wire)?)?),
        Kind::IntOrString => Some(int_or_string(bytes_of(msg, field, wire)?)?),
        Kind::RawExtension => Some(raw_extension(bytes_of(msg, field, wire)?)?),
        Kind::Duration => Some(duration(bytes_of(msg, field, wire)?)?),
        Kind::Msg(_) | Kind::Inline(_) | Kind::MapStr | Kind::MapBytes | Kind::MapQuantity => {
            return Err(bad(format!(
                "{}.{} is not a scalar field",
                msg.name, field.name
            )));
        }
    })
}

/// Takes the object stored under `name` out of `out` (a fresh one when absent or not an
/// object), so a message field seen twice merges, as protobuf specifies.
fn take_object(out: &mut Map<String, Value>, name: &str) -> Map<String, Value> {
    match out.remove(name) {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    }
}

fn push(out: &mut Map<String, Value>, name: &str, v: Value) {
    let mut a = match out.remove(name) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    a.push(v);
    out.insert(name.to_string(), Value::Array(a));
}

/// Decodes `buf` as `msg`, adding its fields to `out`.
fn message(
    msg: &Message,
    buf: &[u8],
    depth: usize,
    out: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    if depth > MAX_DEPTH {
        return Err(bad(format!(
            "messages nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.next()? {
        let Some(field) = msg.field(num) else {
            continue;
        };
        match field.kind {
            Kind::Msg(inner) if field.repeated => {
                let mut o = Map::new();
                message(inner, bytes_of(msg, field, wire)?, depth + 1, &mut o)?;
                push(out, field.name, Value::Object(o));
            }
            Kind::Msg(inner) => {
                let b = bytes_of(msg, field, wire)?;
                let mut o = take_object(out, field.name);
                message(inner, b, depth + 1, &mut o)?;
                out.insert(field.name.to_string(), Value::Object(o));
            }
            Kind::Inline(inner) => {
                message(inner, bytes_of(msg, field, wire)?, depth + 1, out)?;
            }
            Kind::MapStr | Kind::MapBytes | Kind::MapQuantity => {
                let (k, v) = map_entry(bytes_of(msg, field, wire)?, field.kind)?;
                let mut o = take_object(out, field.name);
                o.insert(k, v);
                out.insert(field.name.to_string(), Value::Object(o));
            }
            Kind::Bool | Kind::OptBool | Kind::I32 | Kind::OptI32 | Kind::I64 | Kind::OptI64
                if field.repeated =>
            {
                // Repeated varints may come packed in one length-delimited field.
                if let Wire::Bytes(packed) = wire {
                    let mut p = Reader::new(packed);
                    while p.pos < packed.len() {
                        let v = p.varint()?;
                        if let Some(j) = scalar(msg, field, Wire::Varint(v))? {
                            push(out, field.name, j);
                        }
                    }
                } else if let Some(j) = scalar(msg, field, wire)? {
                    push(out, field.name, j);
                }
            }
            _ if field.repeated => {
                if let Some(j) = scalar(msg, field, wire)? {
                    push(out, field.name, j);
                }
            }
            _ => match scalar(msg, field, wire)? {
                Some(j) => {
                    out.insert(field.name.to_string(), j);
                }
                // A later zero occurrence still overrides an earlier value.
                None => {
                    out.remove(field.name);
                }
            },
        }
    }
    Ok(())
}

/// The pieces of the `k8s\0` envelope (`runtime.Unknown`).
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

fn envelope(body: &[u8]) -> Result<Envelope<'_>, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s envelope"))?;
    let mut e = Envelope {
        api_version: String::new(),
        kind: String::new(),
        raw: &[],
        content_encoding: String::new(),
        content_type: String::new(),
    };
    let mut r = Reader::new(rest);
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((tf, tw)) = t.next()? {
                    match (tf, tw) {
                        (1, Wire::Bytes(s)) => e.api_version = string(s)?,
                        (2, Wire::Bytes(s)) => e.kind = string(s)?,
                        (1 | 2, _) => return Err(bad("the envelope's typeMeta is malformed")),
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(s)) => e.raw = s,
            (3, Wire::Bytes(s)) => e.content_encoding = string(s)?,
            (4, Wire::Bytes(s)) => e.content_type = string(s)?,
            (1..=4, _) => return Err(bad("the envelope is malformed")),
            _ => {}
        }
    }
    Ok(e)
}

fn unsupported(why: String) -> ApiError {
    let mut e = ApiError::unsupported_media_type("application/vnd.kubernetes.protobuf");
    e.message = why;
    e
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let env = envelope(body)?;
    if !env.content_encoding.is_empty() {
        return Err(unsupported(format!(
            "the simulator does not decode protobuf bodies with content encoding {:?}; send JSON",
            env.content_encoding
        )));
    }
    let mut obj = match env.content_type.as_str() {
        "" | "application/vnd.kubernetes.protobuf" => {
            let msg = schema::lookup(&env.api_version, &env.kind).ok_or_else(|| {
                let known: Vec<String> = schema::KINDS
                    .iter()
                    .map(|(av, k, _)| format!("{av}/{k}"))
                    .chain(["DeleteOptions".to_string()])
                    .collect();
                unsupported(format!(
                    "the simulator has no protobuf description of {}/{} (it decodes {}); send JSON",
                    env.api_version,
                    env.kind,
                    known.join(", ")
                ))
            })?;
            let mut o = Map::new();
            message(msg, env.raw, 0, &mut o)?;
            Value::Object(o)
        }
        "application/json" => serde_json::from_slice(env.raw)
            .map_err(|e| bad(format!("the envelope's JSON is invalid: {e}")))?,
        other => {
            return Err(unsupported(format!(
                "the simulator does not decode an envelope of content type {other:?}; send JSON"
            )));
        }
    };
    if !obj.is_object() {
        return Err(bad("the envelope does not hold an object"));
    }
    obj["apiVersion"] = json!(env.api_version);
    obj["kind"] = json!(env.kind);
    Ok(obj)
}

#[cfg(test)]
mod tests;
