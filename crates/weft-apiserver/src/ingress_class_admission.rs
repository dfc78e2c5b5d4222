//! The DefaultIngressClass admission kube-apiserver runs on a new Ingress: one that names no
//! class (no `spec.ingressClassName`, not even an empty one, and no `kubernetes.io/ingress.class`
//! annotation) gets the default IngressClass's name, the class annotated
//! `ingressclass.kubernetes.io/is-default-class: "true"`. With several defaults the newest wins
//! (ties: the first name), as upstream chooses since 1.28 (before, it refused the Ingress).
//! Updates are left alone, as upstream's plugin handles Create only.

use serde_json::{Value, json};

use crate::rest::Api;

/// The annotation that makes an IngressClass the default.
pub const IS_DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// The deprecated annotation that names an Ingress's class.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Sets `spec.ingressClassName` of a new `ingress` to the default class among those stored.
pub fn admit(api: &Api, ingress: &mut Value) {
    if !needs_class(ingress) {
        return;
    }
    let Some(kind) = weft_api::kinds::by_gvk("networking.k8s.io/v1", "IngressClass") else { return };
    let (classes, _) = api.store.list(&kind.resource_key(), None);
    if let Some(name) = default_class(classes.iter().map(|c| c.as_ref())) {
        set_class(ingress, &name);
    }
}

/// Whether `ingress` names no class at all.
fn needs_class(ingress: &Value) -> bool {
    let stated = ingress.pointer("/spec/ingressClassName").is_some_and(|c| !c.is_null());
    let annotated = ingress
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(CLASS_ANNOTATION));
    !stated && !annotated
}

fn set_class(ingress: &mut Value, name: &str) {
    let Some(obj) = ingress.as_object_mut() else { return };
    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    if let Some(spec) = spec.as_object_mut() {
        spec.insert("ingressClassName".into(), json!(name));
    }
}

/// The default class's name: among the classes annotated as default, the newest by
/// `creationTimestamp`, ties broken by the smaller name.
pub fn default_class<'a>(classes: impl Iterator<Item = &'a Value>) -> Option<String> {
    classes
        .filter(|c| {
            c.pointer("/metadata/annotations").and_then(|a| a.get(IS_DEFAULT_CLASS)).and_then(Value::as_str)
                == Some("true")
        })
        .filter_map(|c| {
            let name = c.pointer("/metadata/name").and_then(Value::as_str)?;
            let created = c
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            Some((created, name))
        })
        // The newest; among equally new ones, the first name.
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, name)| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, created: &str, default: Option<&str>) -> Value {
        let mut c = json!({"metadata": {"name": name, "creationTimestamp": created}, "spec": {"controller": "x/y"}});
        if let Some(d) = default {
            c["metadata"]["annotations"] = json!({IS_DEFAULT_CLASS: d});
        }
        c
    }

    #[test]
    fn the_newest_default_wins_and_ties_go_to_the_first_name() {
        let none = [class("a", "2026-01-01T00:00:00Z", None), class("b", "2026-01-02T00:00:00Z", Some("false"))];
        assert_eq!(default_class(none.iter()), None);
        let two = [
            class("old", "2026-01-01T00:00:00Z", Some("true")),
            class("new", "2026-01-02T00:00:00Z", Some("true")),
            class("newer-but-not-default", "2026-01-03T00:00:00Z", None),
        ];
        assert_eq!(default_class(two.iter()).as_deref(), Some("new"));
        let tie =
            [class("zeta", "2026-01-02T00:00:00Z", Some("true")), class("alpha", "2026-01-02T00:00:00Z", Some("true"))];
        assert_eq!(default_class(tie.iter()).as_deref(), Some("alpha"));
    }

    #[test]
    fn only_an_ingress_that_names_no_class_needs_one() {
        assert!(needs_class(&json!({"metadata": {"name": "i"}, "spec": {}})));
        assert!(needs_class(&json!({"metadata": {"name": "i"}})));
        assert!(needs_class(&json!({"metadata": {"name": "i"}, "spec": {"ingressClassName": null}})));
        // An empty name is a name (upstream tests the pointer, not the string).
        assert!(!needs_class(&json!({"spec": {"ingressClassName": ""}})));
        assert!(!needs_class(&json!({"spec": {"ingressClassName": "other"}})));
        assert!(!needs_class(&json!({"metadata": {"annotations": {CLASS_ANNOTATION: "nginx"}}, "spec": {}})));
        let mut i = json!({"metadata": {"name": "i"}});
        set_class(&mut i, "weft");
        assert_eq!(i["spec"]["ingressClassName"], "weft");
    }

    /// Through the API's create: an Ingress without a class gets the default's name; one with a
    /// class, the annotation or an update keeps what it has.
    #[tokio::test]
    async fn a_new_ingress_without_a_class_gets_the_default_through_the_api() {
        use std::sync::Arc;

        use crate::rest::{Query, Target, WriteOpts};
        let dir = tempfile::tempdir().unwrap();
        let store = weft_store::Store::open(&dir.path().join("store.redb"), weft_store::DEFAULT_HISTORY).unwrap();
        let alloc = crate::alloc::Allocators {
            ips: crate::alloc::IpAllocator::new("10.96.0.0/24".parse().unwrap()),
            ports: crate::alloc::PortAllocator::new(30000..=30010),
        };
        let api = Api::new(store, alloc, Arc::new(crate::pod_logs::NoPodLogs));
        let at = |group: &str, plural: &str, ns: Option<&str>, name: Option<&str>| Target {
            kind: weft_api::kinds::by_path(group, "v1", plural).unwrap(),
            namespace: ns.map(String::from),
            name: name.map(String::from),
            sub: None,
        };
        let o = WriteOpts { dry_run: false, strict: false };
        let create = async |group: &str, plural: &str, ns: Option<&str>, v: Value| {
            api.create(&at(group, plural, ns, None), &serde_json::to_vec(&v).unwrap(), o)
                .await
                .unwrap_or_else(|e| panic!("{}", e.message))
        };
        create("", "namespaces", None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}}))
            .await;
        let ingress = |name: &str| {
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name},
                "spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}}})
        };
        let net = "networking.k8s.io";
        // No default class: nothing is set.
        let i = create(net, "ingresses", Some("web"), ingress("before")).await;
        assert!(i["spec"].get("ingressClassName").is_none(), "{i}");
        let class = |name: &str, default: &str| {
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": {"name": name, "annotations": {IS_DEFAULT_CLASS: default}}, "spec": {"controller": "weft.dev/ingress"}})
        };
        create(net, "ingressclasses", None, class("weft", "true")).await;
        create(net, "ingressclasses", None, class("other", "false")).await;
        let i = create(net, "ingresses", Some("web"), ingress("after")).await;
        assert_eq!(i["spec"]["ingressClassName"], "weft");
        let mut named = ingress("named");
        named["spec"]["ingressClassName"] = json!("other");
        assert_eq!(create(net, "ingresses", Some("web"), named).await["spec"]["ingressClassName"], "other");
        let mut annotated = ingress("annotated");
        annotated["metadata"]["annotations"] = json!({CLASS_ANNOTATION: "nginx"});
        let i = create(net, "ingresses", Some("web"), annotated).await;
        assert!(i["spec"].get("ingressClassName").is_none(), "{i}");
        // An update of the Ingress made before the default existed stays without a class.
        let mut before = api.get(&at(net, "ingresses", Some("web"), Some("before")), "", &Query::new()).unwrap();
        before["metadata"]["labels"] = json!({"a": "b"});
        let t = at(net, "ingresses", Some("web"), Some("before"));
        let updated = api.update(&t, &serde_json::to_vec(&before).unwrap(), o).await.unwrap();
        assert!(updated["spec"].get("ingressClassName").is_none(), "{updated}");
        api.store.close();
    }
}
