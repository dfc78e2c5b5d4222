//! Reading manifests: multi-document YAML or JSON, with `kind: List` expanded.

use serde_json::Value;

/// Parses every document of a manifest into JSON values, skipping empty documents and expanding
/// `List` objects into their items.
pub fn parse_manifests(text: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON, possibly several concatenated objects; JSON documents between `---` lines are a
        // YAML stream (JSON is YAML), as kubectl reads them.
        let json: Result<Vec<Value>, String> = serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .map(|v| v.map_err(|e| format!("invalid JSON: {e}")))
            .collect();
        match json {
            Ok(docs) => docs,
            Err(e) => serde_saphyr::from_multiple::<Value>(text).map_err(|_| e)?,
        }
    } else {
        serde_saphyr::from_multiple::<Value>(text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    let mut out = vec![];
    for d in docs {
        match d {
            Value::Null => {}
            Value::Array(items) => out.extend(items),
            Value::Object(ref o) if o.get("kind").and_then(|k| k.as_str()).is_some_and(|k| k.ends_with("List")) => {
                if let Some(Value::Array(items)) = o.get("items") {
                    out.extend(items.iter().cloned());
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_documents_between_yaml_separators() {
        let docs = parse_manifests(
            "{\"kind\": \"Pod\", \"apiVersion\": \"v1\"}\n---\n{\"kind\": \"Service\", \"apiVersion\": \"v1\"}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["kind"], "Service");
        // Broken JSON is reported as JSON.
        assert!(parse_manifests("{\"kind\": ").unwrap_err().contains("invalid JSON"));
    }

    #[test]
    fn multi_document_yaml() {
        let docs = parse_manifests("---\napiVersion: v1\nkind: Service\nmetadata:\n  name: a\n---\n---\napiVersion: v1\nkind: List\nitems:\n- kind: Pod\n  apiVersion: v1\n- kind: Pod\n  apiVersion: v1\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0]["metadata"]["name"], "a");
        assert!(parse_manifests("a: [").is_err());
    }

    #[test]
    fn numbers_stay_numbers() {
        let d = parse_manifests("spec:\n  ports:\n  - port: 80\n    targetPort: \"9376\"\n").unwrap();
        assert_eq!(d[0]["spec"]["ports"][0]["port"], 80);
        assert_eq!(d[0]["spec"]["ports"][0]["targetPort"], "9376");
    }
}
