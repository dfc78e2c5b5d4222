//! Bodies built by hand, byte by byte, as client-go's generated marshallers write them: every
//! non-pointer field, zero or not, and pointer fields only when set.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::wire::{entry, envelope, ld, vi};

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// `ObjectMeta` as Go writes it for a new object: every string, `generation` and the zero
/// `creationTimestamp`.
fn meta(name: &str, labels: &[(&str, &str)]) -> Vec<u8> {
    let mut m = cat(&[
        ld(1, name.as_bytes()),
        ld(2, b""),
        ld(3, b""),
        ld(4, b""),
        ld(5, b""),
        ld(6, b""),
        vi(7, 0),
        ld(8, &[]),
    ]);
    for (k, v) in labels {
        m.extend(ld(11, &entry(k, v.as_bytes())));
    }
    m
}

#[test]
fn a_configmap() {
    let raw = cat(&[ld(1, &meta("x", &[])), ld(2, &entry("a", b"b")), ld(2, &entry("empty", b""))]);
    let v = decode(&envelope("v1", "ConfigMap", &raw)).unwrap();
    assert_eq!(
        v,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b", "empty": ""}})
    );
}

#[test]
fn a_deployment_with_int_or_string_and_time() {
    let container = cat(&[ld(1, b"nginx"), ld(2, b"nginx:1.27"), ld(5, b""), ld(8, b"")]);
    let pod_spec = cat(&[ld(2, &container), ld(3, b""), ld(6, b""), vi(21, 0)]);
    let template = cat(&[ld(1, &meta("", &[("app", "x")])), ld(2, &pod_spec)]);
    // maxSurge "25%" (a string), maxUnavailable 0 (an int, kept: the field is a pointer).
    let rolling =
        cat(&[ld(1, &cat(&[vi(1, 0), vi(2, 0), ld(3, b"")])), ld(2, &cat(&[vi(1, 1), vi(2, 0), ld(3, b"25%")]))]);
    let strategy = cat(&[ld(1, b"RollingUpdate"), ld(2, &rolling)]);
    let selector = ld(1, &entry("app", b"x"));
    let spec = cat(&[vi(1, 0), ld(2, &selector), ld(3, &template), ld(4, &strategy), vi(5, 0), vi(7, 0)]);
    let mut md = meta("x", &[("app", "x")]);
    // deletionTimestamp 2024-05-06T07:08:09Z (a pointer field set)
    md.extend(ld(9, &vi(1, 1_714_979_289)));
    let raw = cat(&[ld(1, &md), ld(2, &spec), ld(3, b"")]);
    let v = decode(&envelope("apps/v1", "Deployment", &raw)).unwrap();
    assert_eq!(
        v,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "x", "deletionTimestamp": "2024-05-06T07:08:09Z", "labels": {"app": "x"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "x"}},
                "template": {
                    "metadata": {"labels": {"app": "x"}},
                    "spec": {
                        "containers": [{"name": "nginx", "image": "nginx:1.27", "resources": {}}],
                        "automountServiceAccountToken": false
                    }
                },
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}}
            },
            "status": {}
        })
    );
}

#[test]
fn a_secret_with_bytes() {
    let raw = cat(&[ld(1, &meta("s", &[])), ld(2, &entry("password", b"\x00\xffhi")), ld(3, b"Opaque")]);
    let v = decode(&envelope("v1", "Secret", &raw)).unwrap();
    assert_eq!(v["data"], json!({"password": "AP9oaQ=="}));
    assert_eq!(v["type"], "Opaque");
}

#[test]
fn a_service_port_and_inline_structs() {
    // ServicePort{name "", protocol TCP, port 80, targetPort 8080, nodePort 0}
    let port =
        cat(&[ld(1, b""), ld(2, b"TCP"), vi(3, 80), ld(4, &cat(&[vi(1, 0), vi(2, 8080), ld(3, b"")])), vi(5, 0)]);
    let spec = cat(&[ld(1, &port), ld(3, b""), ld(4, b"ClusterIP")]);
    let v = decode(&envelope("v1", "Service", &cat(&[ld(1, &meta("s", &[])), ld(2, &spec)]))).unwrap();
    assert_eq!(v["spec"], json!({"ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080}], "type": "ClusterIP"}));
    // Volume{name, volumeSource{configMap{localObjectReference{name}}}} flattens.
    let cm = ld(1, &ld(1, b"cfg"));
    let volume = cat(&[ld(1, b"v"), ld(2, &ld(19, &cm))]);
    let pod = cat(&[ld(1, &meta("p", &[])), ld(2, &ld(1, &volume))]);
    let v = decode(&envelope("v1", "Pod", &pod)).unwrap();
    assert_eq!(v["spec"]["volumes"], json!([{"name": "v", "configMap": {"name": "cfg"}}]));
}

#[test]
fn meta_kinds_and_times() {
    let v = decode(&envelope("v1", "DeleteOptions", &vi(1, 30))).unwrap();
    assert_eq!(v, json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 30}));
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1_500_000_000), "1.5s");
    assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
    assert_eq!(go_duration(150_000_000), "150ms");
}

#[test]
fn errors_say_what_is_wrong() {
    let e = |b: &[u8]| decode(b).unwrap_err().to_string();
    assert!(e(b"{\"kind\":\"x\"}").contains("magic bytes"), "{}", e(b"{}"));
    assert!(e(b"k8s\0").contains("no apiVersion and kind"));
    assert!(e(&envelope("foo.example.com/v1", "Widget", b"")).contains("cannot read a foo.example.com/v1 Widget"));
    assert!(e(&envelope("v1", "ConfigMap", &[0x0a, 0x05, 0x01])).contains("v1 ConfigMap"));
    let mut truncated = envelope("v1", "ConfigMap", &meta("x", &[]));
    truncated.truncate(truncated.len() - 3);
    assert!(e(&truncated).contains("envelope"));
}

#[test]
fn deep_nesting_is_refused() {
    // JSON carried in a RawExtension (ControllerRevision.data) deeper than serde_json reads.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let rev = cat(&[ld(1, &meta("r", &[])), ld(2, &ld(1, deep.as_bytes())), vi(3, 1)]);
    let e = decode(&envelope("apps/v1", "ControllerRevision", &rev)).unwrap_err();
    assert!(e.to_string().contains("not JSON"), "{e}");
    // Deeply nested protobuf messages: prost stops at its recursion limit.
    let mut m = vec![];
    for _ in 0..500 {
        m = ld(1, &m);
    }
    assert!(decode(&envelope("v1", "ConfigMap", &m)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut b = MAGIC.to_vec();
        b.extend(tail);
        let _ = decode(&b);
    }

    #[test]
    fn damaged_objects_never_panic(cut in 0usize..400, flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..8)) {
        let container = cat(&[ld(1, b"nginx"), ld(2, b"nginx:1.27")]);
        let spec = cat(&[vi(1, 3), ld(3, &cat(&[ld(1, &meta("", &[("app", "x")])), ld(2, &ld(2, &container))]))]);
        let mut raw = cat(&[ld(1, &meta("x", &[("app", "x")])), ld(2, &spec)]);
        for (at, byte) in flips {
            if let Some(b) = raw.get_mut(at) {
                *b = byte;
            }
        }
        raw.truncate(cut.min(raw.len()));
        let _ = decode(&envelope("apps/v1", "Deployment", &raw));
    }
}
