//! The OpenAPI v2 (Swagger 2.0) form of the v3 documents, as kube-apiserver serves both: `$ref`s
//! to `#/definitions/`, a `$ref` beside its description instead of `allOf`, no `oneOf`, body
//! parameters instead of `requestBody`, and `consumes`/`produces` instead of `content`.

use serde_json::{Map, Value, json};

use crate::schemas::V3_PREFIX;

const V2_PREFIX: &str = "#/definitions/";

/// A schema (a definition or a part of one) in the v2 form.
pub fn schema(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        out.insert(k.clone(), json!(r.replacen(V3_PREFIX, V2_PREFIX, 1)));
                    }
                    // `allOf: [{$ref}]` was only there to carry siblings, which v2 keeps beside `$ref`.
                    ("allOf", Value::Array(a)) if a.len() == 1 && a[0].get("$ref").is_some() => {
                        if let Value::Object(inner) = schema(&a[0]) {
                            out.extend(inner);
                        }
                    }
                    // Swagger 2.0 has no `oneOf`: the int-or-string and quantity forms are strings.
                    ("oneOf", _) => {
                        out.entry("type").or_insert_with(|| json!("string"));
                    }
                    _ => {
                        out.insert(k.clone(), schema(v));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(schema).collect()),
        other => other.clone(),
    }
}

/// A path item (its operations) in the v2 form.
pub fn path_item(item: &Value) -> Value {
    let Some(o) = item.as_object() else { return item.clone() };
    let mut out = Map::new();
    for (k, v) in o {
        let converted = match k.as_str() {
            "parameters" => parameters(v),
            "get" | "put" | "post" | "patch" | "delete" => operation(v),
            _ => v.clone(),
        };
        out.insert(k.clone(), converted);
    }
    Value::Object(out)
}

fn parameters(v: &Value) -> Value {
    let list = v.as_array().map(|a| a.as_slice()).unwrap_or_default();
    Value::Array(
        list.iter()
            .map(|p| {
                let mut p = p.clone();
                if let Some(o) = p.as_object_mut()
                    && let Some(Value::Object(s)) = o.remove("schema")
                {
                    o.extend(s);
                }
                p
            })
            .collect(),
    )
}

fn operation(op: &Value) -> Value {
    let Some(o) = op.as_object() else { return op.clone() };
    let mut out = Map::new();
    let mut params = o.get("parameters").map(parameters).and_then(|p| p.as_array().cloned()).unwrap_or_default();
    let mut produces: Vec<String> = vec![];
    for (k, v) in o {
        match k.as_str() {
            "parameters" => {}
            "requestBody" => {
                let content = v["content"].as_object().cloned().unwrap_or_default();
                out.insert("consumes".into(), json!(content.keys().collect::<Vec<_>>()));
                if let Some((_, first)) = content.iter().next() {
                    params.insert(
                        0,
                        json!({"name": "body", "in": "body", "required": true, "schema": schema(&first["schema"])}),
                    );
                }
            }
            "responses" => {
                let mut responses = Map::new();
                for (code, r) in v.as_object().into_iter().flatten() {
                    let mut resp = json!({"description": r["description"]});
                    if let Some(content) = r["content"].as_object() {
                        for t in content.keys() {
                            if !produces.contains(t) {
                                produces.push(t.clone());
                            }
                        }
                        if let Some((_, first)) = content.iter().next() {
                            resp["schema"] = schema(&first["schema"]);
                        }
                    }
                    responses.insert(code.clone(), resp);
                }
                out.insert(k.clone(), Value::Object(responses));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if !produces.is_empty() {
        out.insert("produces".into(), json!(produces));
    }
    out.insert("schemes".into(), json!(["https"]));
    if !params.is_empty() {
        out.insert("parameters".into(), Value::Array(params));
    }
    Value::Object(out)
}
