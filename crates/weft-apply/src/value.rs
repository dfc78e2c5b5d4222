//! JSON values as structured-merge-diff orders, compares and prints them (`value.Compare`,
//! `value.Equals`, `value.ToString`): field sets are sorted by this order, so their `FieldsV1`
//! form has upstream's key order.

use std::cmp::Ordering;

use serde_json::Value;

/// Upstream's total order: numbers (ints and floats compared numerically) < strings < booleans
/// < lists < maps < null.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            Value::Bool(_) => 2,
            Value::Array(_) => 3,
            Value::Object(_) => 4,
            Value::Null => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let c = compare(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            for (p, q) in xs.iter().zip(&ys) {
                let c = p.0.cmp(q.0).then_with(|| compare(p.1, q.1));
                if c != Ordering::Equal {
                    return c;
                }
            }
            xs.len().cmp(&ys.len())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

fn compare_numbers(x: &serde_json::Number, y: &serde_json::Number) -> Ordering {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return a.cmp(&b);
    }
    if let (Some(a), Some(b)) = (x.as_u64(), y.as_u64()) {
        return a.cmp(&b);
    }
    let (a, b) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

/// Equality as upstream's `value.Equals` (1 and 1.0 are equal).
pub fn equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equals(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equals(v, w)))
        }
        _ => a == b,
    }
}

/// A value as it appears in a path's text (`[name="nginx"]`, `[=80]`): strings quoted.
pub fn to_string(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(to_string).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => {
            let mut parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", to_string(v))).collect();
            parts.sort();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// JSON text as Go's encoding/json writes it: `<`, `>`, `&`, U+2028 and U+2029 escaped (they can
/// only occur inside strings, so replacing them everywhere is exact).
pub fn go_json(v: &Value) -> String {
    escape_html(&v.to_string())
}

pub fn escape_html(s: &str) -> String {
    if !s.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// A copy with every object's keys sorted, as Go marshals maps (`unstructured` objects).
pub fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn order_is_upstreams() {
        let mut vs = vec![json!(null), json!({}), json!([1]), json!(true), json!("a"), json!(2.5), json!(2)];
        vs.sort_by(compare);
        assert_eq!(vs, vec![json!(2), json!(2.5), json!("a"), json!(true), json!([1]), json!({}), json!(null)]);
        assert!(equals(&json!(1), &json!(1.0)));
        assert_eq!(to_string(&json!("x")), "\"x\"");
        assert_eq!(go_json(&json!({"a": "<&>"})), r#"{"a":"\u003c\u0026\u003e"}"#);
    }
}
