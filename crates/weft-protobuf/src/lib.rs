//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded into the
//! JSON object the API admits, as if the client had sent JSON.
//!
//! A body is the four magic bytes `k8s\0` and then a `runtime.Unknown` message: `typeMeta`
//! (`apiVersion`, `kind`), `raw` (the object's own protobuf), `contentEncoding` and `contentType`.
//! The object is read by reflection ([`prost_reflect::DynamicMessage`]) against the descriptors of
//! the vendored `generated.proto` files (compiled by protox in `build.rs`), and walked into JSON
//! with Kubernetes' rules: the `.proto` field names are the JSON names; `Time` and `MicroTime` are
//! RFC 3339 strings, `IntOrString` a number or a string, `Quantity` its string, `RawExtension` and
//! `FieldsV1` the JSON they carry; bytes are base64; Go's inline structs (`Volume.volumeSource`,
//! `Probe.handler`, ...) are flattened into their parent; and a zero scalar is dropped unless the
//! Go field is a pointer (`pointers.rs`), because Go writes every non-pointer field on the wire.
//!
//! Why reflection rather than generated types: `k8s-pb` would give prost structs without serde,
//! and converting each of them to JSON (or to k8s-openapi's types) by hand is thousands of lines
//! for every kind served; one generic walk over descriptors covers every kind in the `.proto`
//! files, and a new kind needs only its file added to `build.rs`.

use std::fmt;
use std::sync::OnceLock;

use base64::Engine;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage, Value as PValue};
use serde_json::{Map, Number, Value};

pub mod markers;
mod pointers;
pub mod wire;

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// What every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8] = b"k8s\0";
/// Nesting deeper than this is refused (the API admits at most 100 levels; prost itself stops
/// decoding at 100 nested messages).
const MAX_NESTING: usize = 128;

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1";
const INT_OR_STRING: &str = "k8s.io.apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "k8s.io.apimachinery.pkg.api.resource.Quantity";
const RAW_EXTENSION: &str = "k8s.io.apimachinery.pkg.runtime.RawExtension";
const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";

/// Go structs embedded with `json:",inline"`: (field, message type). Their fields belong to the
/// parent in JSON.
const INLINE: &[(&str, &str)] = &[
    ("ephemeralContainerCommon", "EphemeralContainerCommon"),
    ("ingressRuleValue", "IngressRuleValue"),
    ("localObjectReference", "LocalObjectReference"),
    ("persistentVolumeSource", "PersistentVolumeSource"),
    ("handler", "ProbeHandler"),
    ("volumeSource", "VolumeSource"),
];

/// What is wrong with a body, in words for a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(s: impl Into<String>) -> Error {
    Error(s.into())
}

/// Whether a `Content-Type` header names Kubernetes protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(MEDIA_TYPE)
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/k8s.bin")).as_slice())
            .expect("the descriptor set that build.rs compiled decodes")
    })
}

/// The message for an `apiVersion` and `kind`, among the groups whose `.proto` files are built in
/// (meta/v1's own kinds, such as DeleteOptions, under any version).
fn message_for(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => Some("core"),
        "apps" | "batch" | "autoscaling" => Some(group),
        "discovery.k8s.io" | "networking.k8s.io" | "events.k8s.io" => group.split('.').next(),
        "rbac.authorization.k8s.io" | "authorization.k8s.io" => group.split('.').next(),
        "authentication.k8s.io" => Some("authentication"),
        _ => None,
    };
    package
        .and_then(|p| pool().get_message_by_name(&format!("k8s.io.api.{p}.{version}.{kind}")))
        .or_else(|| pool().get_message_by_name(&format!("{META}.{kind}")))
}

/// Decodes a protobuf body (`k8s\0` + `runtime.Unknown`) into the JSON object it stands for, with
/// its `apiVersion` and `kind`.
pub fn decode(bytes: &[u8]) -> Result<Value, Error> {
    let rest = bytes.strip_prefix(MAGIC).ok_or_else(|| {
        err("the protobuf body does not start with the Kubernetes magic bytes \"k8s\\x00\": send a runtime.Unknown envelope, or JSON")
    })?;
    let envelope_desc = pool().get_message_by_name(UNKNOWN).expect("runtime.Unknown is in the descriptor set");
    let envelope = DynamicMessage::decode(envelope_desc, rest)
        .map_err(|e| err(format!("the protobuf envelope (runtime.Unknown) does not decode: {e}")))?;
    let string = |m: &DynamicMessage, name: &str| m.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_owned));
    let type_meta = envelope.get_field_by_name("typeMeta");
    let type_meta = type_meta.as_deref().and_then(PValue::as_message);
    let api_version = type_meta.and_then(|t| string(t, "apiVersion")).unwrap_or_default();
    let kind = type_meta.and_then(|t| string(t, "kind")).unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        return Err(err("the protobuf envelope names no apiVersion and kind (typeMeta): say what the object is"));
    }
    let encoding = string(&envelope, "contentEncoding").unwrap_or_default();
    if !encoding.is_empty() {
        return Err(err(format!("the protobuf envelope has contentEncoding {encoding:?}: send the object unencoded")));
    }
    let content_type = string(&envelope, "contentType").unwrap_or_default();
    if !content_type.is_empty() && !is_protobuf(&content_type) {
        return Err(err(format!(
            "the protobuf envelope carries {content_type:?}: its raw object must be protobuf ({MEDIA_TYPE})"
        )));
    }
    let desc = message_for(&api_version, &kind).ok_or_else(|| {
        err(format!("this server cannot read a {api_version} {kind} in protobuf: send it as JSON (application/json)"))
    })?;
    let raw = envelope.get_field_by_name("raw");
    let raw = raw.as_deref().and_then(PValue::as_bytes).cloned().unwrap_or_default();
    let object = DynamicMessage::decode(desc, raw)
        .map_err(|e| err(format!("the {api_version} {kind} in the protobuf body does not decode: {e}")))?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    if let Value::Object(fields) = message(&object, 0)? {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

fn is_pointer(message: &str, field: &str) -> bool {
    let key = format!("{message}.{field}");
    pointers::POINTER_FIELDS.binary_search(&key.as_str()).is_ok()
}

/// The JSON name of a field: the `.proto` name, but for the one that go-to-protobuf spelled
/// differently.
fn json_name(proto: &str) -> &str {
    if proto == "aPIGroup" { "apiGroup" } else { proto }
}

/// A message as JSON. Kinds with a JSON form of their own come out as it (`Value::Null` for the
/// zero `Time`, which JSON leaves out).
fn message(m: &DynamicMessage, depth: usize) -> Result<Value, Error> {
    if depth > MAX_NESTING {
        return Err(err(format!("the protobuf object nests deeper than {MAX_NESTING} levels: flatten it")));
    }
    let desc = m.descriptor();
    let get = |name: &str| m.get_field_by_name(name).map(|v| v.into_owned());
    match desc.full_name() {
        TIME | MICRO_TIME => {
            let seconds = get("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
            let nanos = get("nanos").and_then(|v| v.as_i32()).unwrap_or(0);
            if seconds == 0 && nanos == 0 {
                return Ok(Value::Null);
            }
            let at = jiff::Timestamp::from_second(seconds)
                .map_err(|e| err(format!("a time in the protobuf body is out of range ({seconds} s): {e}")))?;
            if desc.full_name() == TIME {
                return Ok(Value::String(at.to_string()));
            }
            if !(0..1_000_000_000).contains(&nanos) {
                return Err(err(format!("a MicroTime in the protobuf body has {nanos} nanoseconds")));
            }
            let s = at.to_string();
            return Ok(Value::String(format!("{}.{:06}Z", s.trim_end_matches('Z'), nanos / 1000)));
        }
        DURATION => {
            let nanos = get("duration").and_then(|v| v.as_i64()).unwrap_or(0);
            return Ok(Value::String(go_duration(nanos)));
        }
        INT_OR_STRING => {
            return Ok(if get("type").and_then(|v| v.as_i64()) == Some(1) {
                Value::String(get("strVal").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default())
            } else {
                Value::from(get("intVal").and_then(|v| v.as_i32()).unwrap_or(0))
            });
        }
        QUANTITY => {
            return Ok(Value::String(get("string").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()));
        }
        FIELDS_V1 | RAW_EXTENSION => {
            let raw = get(if desc.full_name() == FIELDS_V1 { "Raw" } else { "raw" })
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            if raw.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&raw).map_err(|e| {
                err(format!("an embedded object ({}) in the protobuf body is not JSON: {e}", desc.name()))
            });
        }
        _ => {}
    }
    let mut out = Map::new();
    for (field, value) in m.fields() {
        let name = json_name(field.name());
        let pointer = is_pointer(desc.full_name(), name);
        let v = match value {
            PValue::List(items) => {
                if items.is_empty() {
                    continue;
                }
                Value::Array(items.iter().map(|i| scalar_or_message(i, depth)).collect::<Result<_, _>>()?)
            }
            PValue::Map(entries) => {
                let mut obj = Map::new();
                for (k, v) in entries {
                    let k = match k {
                        MapKey::String(s) => s.clone(),
                        MapKey::Bool(b) => b.to_string(),
                        MapKey::I32(n) => n.to_string(),
                        MapKey::I64(n) => n.to_string(),
                        MapKey::U32(n) => n.to_string(),
                        MapKey::U64(n) => n.to_string(),
                    };
                    obj.insert(k, scalar_or_message(v, depth)?);
                }
                Value::Object(obj)
            }
            PValue::Message(child) => {
                let child_type = child.descriptor();
                if INLINE.contains(&(field.name(), child_type.name())) {
                    if let Value::Object(fields) = message(child, depth + 1)? {
                        out.extend(fields);
                    }
                    continue;
                }
                let v = message(child, depth + 1)?;
                if !pointer && is_zero(&v, child_type.full_name()) {
                    continue;
                }
                v
            }
            other => {
                let v = scalar_or_message(other, depth)?;
                let zero = match &v {
                    Value::Bool(b) => !b,
                    Value::Number(n) => n.as_f64() == Some(0.0),
                    Value::String(s) => s.is_empty(),
                    _ => false,
                };
                if zero && !pointer && !matches!(field.kind(), Kind::Message(_)) {
                    continue;
                }
                v
            }
        };
        out.insert(name.to_string(), v);
    }
    Ok(Value::Object(out))
}

/// Whether a special kind's JSON is its zero value, which Go leaves out unless the field is a
/// pointer. Ordinary messages are kept even when empty (`strategy: {}`), as Go's JSON keeps them.
fn is_zero(v: &Value, type_name: &str) -> bool {
    match type_name {
        TIME | MICRO_TIME | FIELDS_V1 | RAW_EXTENSION => v.is_null(),
        INT_OR_STRING => v == &Value::from(0),
        QUANTITY => v == &Value::String(String::new()),
        _ => false,
    }
}

fn scalar_or_message(v: &PValue, depth: usize) -> Result<Value, Error> {
    Ok(match v {
        PValue::Bool(b) => Value::Bool(*b),
        PValue::I32(n) => Value::from(*n),
        PValue::I64(n) => Value::from(*n),
        PValue::U32(n) => Value::from(*n),
        PValue::U64(n) => Value::from(*n),
        PValue::EnumNumber(n) => Value::from(*n),
        PValue::F32(f) => float(f64::from(*f))?,
        PValue::F64(f) => float(*f)?,
        PValue::String(s) => Value::String(s.clone()),
        PValue::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::Message(m) => message(m, depth + 1)?,
        PValue::List(_) | PValue::Map(_) => {
            return Err(err("the protobuf body nests a list or map directly in another"));
        }
    })
}

fn float(f: f64) -> Result<Value, Error> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| err(format!("the protobuf body has a number JSON cannot hold ({f})")))
}

/// A duration as Go's `time.Duration.String` writes it (`1h2m3.5s`, `150ms`, `0s`).
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000_000_000 {
        let (unit, div) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", fraction(n, div));
    }
    let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let s = fraction(rest, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

/// `n / div` with the fraction Go prints (no trailing zeros).
fn fraction(n: u64, div: u64) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests;
