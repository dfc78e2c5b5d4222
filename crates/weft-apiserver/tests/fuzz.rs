//! Bounded property tests (they run in CI): no JSON a client can send panics admission of any
//! kind weft serves, or any of the three patch formats.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use weft_apiserver::patch::{PatchKind, apply};

/// Arbitrary JSON, biased towards the shapes objects have (metadata, spec, lists of objects).
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("metadata".to_string()),
        Just("spec".to_string()),
        Just("name".to_string()),
        Just("ports".to_string()),
        Just("containers".to_string()),
        Just("selector".to_string()),
        Just("replicas".to_string()),
        Just("clusterIP".to_string()),
        Just("type".to_string()),
        "[a-zA-Z$/]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        Just(json!("10.96.0.1")),
        Just(json!("None")),
    ];
    leaf.prop_recursive(6, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn admission_never_panics(v in json_value(), name in "[a-z0-9.-]{0,10}") {
        for kind in weft_api::kinds::ALL {
            let mut o = v.clone();
            if let Value::Object(m) = &mut o {
                m.insert("apiVersion".into(), json!(kind.api_version()));
                m.insert("kind".into(), json!(kind.kind));
                if !m.get("metadata").is_some_and(Value::is_object) {
                    m.insert("metadata".into(), json!({"name": name, "namespace": "default"}));
                }
            }
            let _ = weft_api::objects::admit(kind, &o);
        }
    }

    #[test]
    fn patches_never_panic(object in json_value(), patch in json_value(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let body = serde_json::to_vec(&patch).unwrap();
        for k in [PatchKind::Merge, PatchKind::Json, PatchKind::Strategic] {
            let _ = apply(k, &object, &body);
            let _ = apply(k, &object, &raw);
        }
    }

    /// JSON patches made of valid operations on paths that exist.
    #[test]
    fn json_patch_operations_never_panic(ops in prop::collection::vec((0usize..6, "/(a|b|c)(/(0|1|-|a))?", "/(a|b|c)(/(0|1|a))?", json_value()), 1..12)) {
        let object = json!({"a": [1, {"a": 2}], "b": {"a": "x"}, "c": null});
        let names = ["add", "remove", "replace", "move", "copy", "test"];
        let body: Vec<Value> = ops.into_iter().map(|(i, path, from, value)| json!({"op": names[i], "path": path, "from": from, "value": value})).collect();
        let _ = apply(PatchKind::Json, &object, &serde_json::to_vec(&body).unwrap());
    }
}
