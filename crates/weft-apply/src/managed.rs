//! `metadata.managedFields` as k8s.io/apimachinery's managedfields reads and writes it: one
//! entry per manager identity (manager, operation, apiVersion for Update entries, subresource),
//! each with its field set, the apiVersion it was written in and when.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::set::Set;
use crate::value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// Who a field set belongs to (upstream's manager identifier). Appliers are one identity
/// whatever version they apply in; updaters one per version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id {
    pub manager: String,
    pub operation: Operation,
    /// Empty for Apply.
    pub api_version: String,
    pub subresource: String,
}

impl Id {
    pub fn apply(manager: &str, subresource: &str) -> Id {
        Id {
            manager: manager.into(),
            operation: Operation::Apply,
            api_version: String::new(),
            subresource: subresource.into(),
        }
    }

    pub fn update(manager: &str, api_version: &str, subresource: &str) -> Id {
        Id {
            manager: manager.into(),
            operation: Operation::Update,
            api_version: api_version.into(),
            subresource: subresource.into(),
        }
    }

    /// The identifier's JSON, as upstream builds it (what its cap sorts ties by).
    pub fn identifier(&self) -> String {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation.as_str()));
        if !self.api_version.is_empty() {
            m.insert("apiVersion".into(), json!(self.api_version));
        }
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        value::go_json(&Value::Object(m))
    }

    /// How conflict messages name it: `"kubectl-client-side-apply" using apps/v1`.
    pub fn describe(&self) -> String {
        let mut s = Value::String(self.manager.clone()).to_string();
        if !self.subresource.is_empty() {
            s = format!("{s} with subresource {}", Value::String(self.subresource.clone()));
        }
        if self.operation == Operation::Update {
            s = format!("{s} using {}", self.api_version);
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub set: Set,
    /// The version the fields were written in.
    pub api_version: String,
    /// RFC 3339, when the manager last changed the object.
    pub time: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Managed {
    pub entries: BTreeMap<Id, Entry>,
}

impl Managed {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads `metadata.managedFields` (absent or null is none). Errors name the entry and what
    /// is wrong with it, as upstream's `DecodeManagedFields`.
    pub fn decode(v: Option<&Value>) -> Result<Managed, String> {
        let mut out = Managed::default();
        let items = match v {
            None | Some(Value::Null) => return Ok(out),
            Some(Value::Array(a)) => a,
            Some(_) => return Err("managedFields must be a list".into()),
        };
        for (i, e) in items.iter().enumerate() {
            let Value::Object(e) = e else { return Err(format!("managed fields entry {i} must be an object")) };
            let s = |k: &str| -> Result<&str, String> {
                match e.get(k) {
                    None | Some(Value::Null) => Ok(""),
                    Some(Value::String(s)) => Ok(s),
                    Some(_) => Err(format!("{k} of managed fields entry {i} must be a string")),
                }
            };
            let operation = match s("operation")? {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                _ => return Err("operation must be `Apply` or `Update`".into()),
            };
            let api_version = s("apiVersion")?;
            if api_version.is_empty() {
                return Err("apiVersion must not be empty".into());
            }
            match s("fieldsType")? {
                "FieldsV1" => {}
                "" => return Err(format!("missing fieldsType in managed fields entry {i}")),
                other => return Err(format!("invalid fieldsType {other:?} in managed fields entry {i}")),
            }
            let set = match e.get("fieldsV1") {
                None | Some(Value::Null) => Set::new(),
                Some(f) => Set::from_fields_v1(f)
                    .map_err(|err| format!("error decoding set of managed fields entry {i}: {err}"))?,
            };
            let time = Some(s("time")?).filter(|t| !t.is_empty()).map(String::from);
            let id = Id {
                manager: s("manager")?.to_string(),
                operation,
                api_version: if operation == Operation::Apply { String::new() } else { api_version.to_string() },
                subresource: s("subresource")?.to_string(),
            };
            out.entries.insert(id, Entry { set, api_version: api_version.to_string(), time });
        }
        Ok(out)
    }

    /// `metadata.managedFields` for these entries, in upstream's order (operation, time,
    /// manager, apiVersion, subresource); `None` when there are none.
    pub fn encode(&self) -> Option<Value> {
        if self.entries.is_empty() {
            return None;
        }
        let mut es: Vec<(&Id, &Entry)> = self.entries.iter().collect();
        es.sort_by(|(a, x), (b, y)| {
            a.operation
                .cmp(&b.operation)
                .then_with(|| seconds(x.time.as_deref()).cmp(&seconds(y.time.as_deref())))
                .then_with(|| a.manager.cmp(&b.manager))
                .then_with(|| x.api_version.cmp(&y.api_version))
                .then_with(|| a.subresource.cmp(&b.subresource))
        });
        let list = es
            .into_iter()
            .map(|(id, e)| {
                let mut m = Map::new();
                m.insert("manager".into(), json!(id.manager));
                m.insert("operation".into(), json!(id.operation.as_str()));
                m.insert("apiVersion".into(), json!(e.api_version));
                if let Some(t) = &e.time {
                    m.insert("time".into(), json!(t));
                }
                m.insert("fieldsType".into(), json!("FieldsV1"));
                m.insert("fieldsV1".into(), e.set.to_fields_v1());
                if !id.subresource.is_empty() {
                    m.insert("subresource".into(), json!(id.subresource));
                }
                Value::Object(m)
            })
            .collect();
        Some(Value::Array(list))
    }
}

/// Whether a client asks for managedFields to be reset: an empty list, or one empty entry.
pub fn is_reset(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Array(a)) => {
            a.is_empty() || (a.len() == 1 && a[0].as_object().is_some_and(|e| e.values().all(is_zero)))
        }
        _ => false,
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Unix seconds of an RFC 3339 time (0 for none or one that does not parse, as upstream's nil).
pub fn seconds(t: Option<&str>) -> i64 {
    t.and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| t.as_second()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_from_a_real_cluster_load_and_write_back_alike() {
        let v = json!([
            {"manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1", "time": "2024-05-01T10:00:00Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
             "time": "2024-05-01T10:00:01Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:status": {"f:replicas": {}}}, "subresource": "status"}
        ]);
        let m = Managed::decode(Some(&v)).unwrap();
        assert_eq!(m.entries.len(), 2);
        assert_eq!(m.encode(), Some(v));
        let id = Id::update("kubectl-scale", "apps/v1", "scale");
        assert_eq!(id.describe(), r#""kubectl-scale" with subresource "scale" using apps/v1"#);
        assert_eq!(
            id.identifier(),
            r#"{"manager":"kubectl-scale","operation":"Update","apiVersion":"apps/v1","subresource":"scale"}"#
        );
        assert_eq!(Id::apply("kubectl", "").describe(), r#""kubectl""#);
    }

    #[test]
    fn bad_entries_are_named() {
        let bad = |e: Value| Managed::decode(Some(&json!([e]))).unwrap_err();
        assert_eq!(
            bad(json!({"operation": "Patch", "apiVersion": "v1", "fieldsType": "FieldsV1"})),
            "operation must be `Apply` or `Update`"
        );
        assert_eq!(bad(json!({"operation": "Apply", "fieldsType": "FieldsV1"})), "apiVersion must not be empty");
        assert_eq!(
            bad(json!({"operation": "Apply", "apiVersion": "v1"})),
            "missing fieldsType in managed fields entry 0"
        );
        assert!(
            bad(json!({"operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:a": 3}}))
                .contains("entry 0")
        );
        assert!(bad(json!({"operation": 3})).contains("must be a string"));
        assert!(Managed::decode(Some(&json!("x"))).is_err());
        assert!(is_reset(Some(&json!([]))));
        assert!(is_reset(Some(&json!([{}]))));
        assert!(!is_reset(None));
        assert!(!is_reset(Some(&json!([{"manager": "m"}]))));
    }
}
