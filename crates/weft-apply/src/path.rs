//! Field paths (`fieldpath.Path`): a field of a map or struct, an item of a map-list by its keys,
//! an item of a set by its value, or an item of an atomic list by index. Their order, their text
//! (`.spec.containers[name="nginx"].image`) and their `FieldsV1` keys (`f:spec`,
//! `k:{"name":"nginx"}`, `v:"x"`, `i:0`) are upstream's.

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Value};

use crate::value;

#[derive(Clone, Debug)]
pub enum PathElement {
    /// A field of a map or struct.
    Field(String),
    /// An item of an associative list, by its key fields (sorted by name).
    Key(Vec<(String, Value)>),
    /// An item of a set, by its value.
    Value(Value),
    /// An item of an atomic list, by index (only ever seen in field sets written elsewhere).
    Index(usize),
}

pub type Path = Vec<PathElement>;

impl PathElement {
    fn rank(&self) -> u8 {
        match self {
            PathElement::Field(_) => 0,
            PathElement::Key(_) => 1,
            PathElement::Value(_) => 2,
            PathElement::Index(_) => 3,
        }
    }

    /// The `FieldsV1` key of this element, as upstream's `SerializePathElement` writes it.
    pub fn to_fields_key(&self) -> String {
        match self {
            PathElement::Field(f) => format!("f:{f}"),
            PathElement::Key(fields) => {
                let m: Map<String, Value> = fields.iter().cloned().collect();
                format!("k:{}", value::go_json(&Value::Object(m)))
            }
            PathElement::Value(v) => format!("v:{}", value::go_json(v)),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    /// Reads a `FieldsV1` key. `Ok(None)` for a key of a type this version does not know
    /// (skipped, as upstream does).
    pub fn from_fields_key(s: &str) -> Result<Option<PathElement>, String> {
        let (t, rest) = match (s.get(..1), s.get(1..2), s.get(2..)) {
            (Some(t), Some(":"), Some(rest)) => (t, rest),
            _ if s.len() < 2 => return Err(format!("{s:?}: a key must be at least 2 characters long")),
            _ => return Err(format!("{s:?}: missing colon")),
        };
        Ok(Some(match t {
            "f" => PathElement::Field(rest.to_string()),
            "v" => {
                let v: Value = serde_json::from_str(rest).map_err(|e| format!("{s:?}: {e}"))?;
                PathElement::Value(v)
            }
            "k" => {
                let m: Map<String, Value> = serde_json::from_str(rest).map_err(|e| format!("{s:?}: {e}"))?;
                let mut fields: Vec<(String, Value)> = m.into_iter().collect();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                PathElement::Key(fields)
            }
            "i" => PathElement::Index(rest.parse().map_err(|e| format!("{s:?}: {e}"))?),
            _ => return Ok(None),
        }))
    }
}

impl Ord for PathElement {
    fn cmp(&self, other: &PathElement) -> Ordering {
        match (self, other) {
            (PathElement::Field(a), PathElement::Field(b)) => a.cmp(b),
            (PathElement::Key(a), PathElement::Key(b)) => {
                for (x, y) in a.iter().zip(b) {
                    let c = x.0.cmp(&y.0).then_with(|| value::compare(&x.1, &y.1));
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                a.len().cmp(&b.len())
            }
            (PathElement::Value(a), PathElement::Value(b)) => value::compare(a, b),
            (PathElement::Index(a), PathElement::Index(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for PathElement {
    fn partial_cmp(&self, other: &PathElement) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for PathElement {
    fn eq(&self, other: &PathElement) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for PathElement {}

impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(n) => write!(f, ".{n}"),
            PathElement::Key(fields) => {
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", value::to_string(v))).collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={}]", value::to_string(v)),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path as upstream prints it: `.spec.template.spec.containers[name="nginx"].image`.
pub fn to_string(p: &[PathElement]) -> String {
    p.iter().map(|e| e.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_round_trip_and_print() {
        let k = PathElement::Key(vec![("port".into(), json!(80)), ("protocol".into(), json!("TCP"))]);
        assert_eq!(k.to_fields_key(), r#"k:{"port":80,"protocol":"TCP"}"#);
        assert_eq!(PathElement::from_fields_key(&k.to_fields_key()).unwrap(), Some(k.clone()));
        // Keys written in another order are sorted.
        let back = PathElement::from_fields_key(r#"k:{"protocol":"TCP","port":80}"#).unwrap().unwrap();
        assert_eq!(back, k);
        assert_eq!(back.to_fields_key(), r#"k:{"port":80,"protocol":"TCP"}"#);
        assert_eq!(k.to_string(), r#"[port=80,protocol="TCP"]"#);
        let p = vec![PathElement::Field("spec".into()), PathElement::Value(json!("a"))];
        assert_eq!(to_string(&p), r#".spec[="a"]"#);
        assert_eq!(PathElement::from_fields_key("x:1").unwrap(), None);
        assert!(PathElement::from_fields_key("f").is_err());
        assert!(PathElement::from_fields_key("fx").is_err());
        assert!(PathElement::from_fields_key("k:[1]").is_err());
        assert!(PathElement::from_fields_key("i:-1").is_err());
        assert!(PathElement::from_fields_key("v:{").is_err());
        // Not a char boundary after the first byte: an error, not a panic.
        assert!(PathElement::from_fields_key("é:x").is_err());
    }

    #[test]
    fn order_puts_fields_first() {
        let mut v = [
            PathElement::Index(0),
            PathElement::Value(json!("a")),
            PathElement::Key(vec![("name".into(), json!("a"))]),
            PathElement::Field("z".into()),
        ];
        v.sort();
        assert!(matches!(v[0], PathElement::Field(_)));
        assert!(matches!(v[3], PathElement::Index(_)));
    }
}
