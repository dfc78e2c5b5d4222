//! `labelSelector` and `fieldSelector` query parameters, parsed once per request.

use serde_json::Value;
use weft_k8s::selectors::Selector;

/// A parsed label selector (`app=web,tier in (a,b),!legacy`): Kubernetes' syntax and matching
/// (`weft_k8s::selectors`), with the API's rule for keys.
#[derive(Debug, Clone, Default)]
pub struct LabelSelector(Selector);

impl LabelSelector {
    /// Selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_everything()
    }

    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let sel = Selector::parse(s)?;
        if let Some(k) = sel.requirements().iter().map(|r| r.key()).find(|k| !weft_api::validate::is_label_key(k)) {
            return Err(format!("invalid label key {k:?} in selector {s:?}"));
        }
        Ok(LabelSelector(sel))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        self.0.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(|v| v.as_str()))
    }
}

/// A parsed field selector: equality on dotted paths (`metadata.name=x,spec.nodeName!=n1`). Each
/// requirement reads the first non-empty of its paths in the stored object.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(Vec<String>, bool, String)>);

/// The field labels kube-apiserver selects core/v1 Events by (`ToSelectableFields`); each is the
/// JSON path of the same name, but `source` (`source.component`, else `reportingComponent`).
const CORE_EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
    "metadata.namespace",
    "metadata.name",
];

/// events.k8s.io/v1's field labels and the core ones they select by (`AddFieldLabelConversionsForEvent`).
const EVENTS_V1_FIELDS: &[(&str, &str)] = &[
    ("reason", "reason"),
    ("regarding.kind", "involvedObject.kind"),
    ("regarding.namespace", "involvedObject.namespace"),
    ("regarding.name", "involvedObject.name"),
    ("regarding.uid", "involvedObject.uid"),
    ("regarding.apiVersion", "involvedObject.apiVersion"),
    ("regarding.resourceVersion", "involvedObject.resourceVersion"),
    ("regarding.fieldPath", "involvedObject.fieldPath"),
    ("reportingController", "reportingComponent"),
    ("source", "source"),
    ("type", "type"),
    ("metadata.namespace", "metadata.namespace"),
    ("metadata.name", "metadata.name"),
];

fn pointer(label: &str) -> String {
    format!("/{}", label.replace('.', "/"))
}

impl FieldSelector {
    /// Selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut out = vec![];
        for part in s.split(',').map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector {part:?}: use field=value or field!=value"));
            };
            out.push((vec![k.trim().to_string()], eq, v.trim().to_string()));
        }
        for req in &mut out {
            req.0 = req.0.iter().map(|l| pointer(l)).collect();
        }
        Ok(FieldSelector(out))
    }

    /// [`FieldSelector::parse`] with the field labels of `kind` as kube-apiserver has them: for
    /// Events only the labels it supports (others are its 400 "field label not supported"),
    /// events.k8s.io's names mapped onto the stored core/v1 Event.
    pub fn parse_for(kind: &weft_api::kinds::Kind, s: &str) -> Result<FieldSelector, String> {
        let mut sel = FieldSelector::parse(s)?;
        if kind.kind != "Event" {
            return Ok(sel);
        }
        for req in &mut sel.0 {
            let label = req.0[0].trim_start_matches('/').replace('/', ".");
            let core = match kind.group {
                "events.k8s.io" => EVENTS_V1_FIELDS.iter().find(|(l, _)| *l == label).map(|(_, c)| *c),
                _ => CORE_EVENT_FIELDS.iter().find(|l| **l == label).copied(),
            }
            .ok_or_else(|| format!("field label not supported: {label}"))?;
            req.0 = match core {
                "source" => vec![pointer("source.component"), pointer("reportingComponent")],
                c => vec![pointer(c)],
            };
        }
        Ok(sel)
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(ptrs, eq, want)| {
            let got = ptrs
                .iter()
                .map(|ptr| match obj.pointer(ptr) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(v) => v.to_string(),
                })
                .find(|v| !v.is_empty())
                .unwrap_or_default();
            (got == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "b"}}});
        for (s, want) in [
            ("app=web", true),
            ("app==web,tier=b", true),
            ("app!=web", false),
            ("tier in (a, b)", true),
            ("tier notin (a,b)", false),
            ("app", true),
            ("!app", false),
            ("!legacy", true),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(s).unwrap().matches(&o), want, "{s}");
        }
        assert!(LabelSelector::parse("tier in a").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}});
        assert!(FieldSelector::parse("metadata.name=p,spec.nodeName=n1").unwrap().matches(&o));
        assert!(!FieldSelector::parse("spec.nodeName!=n1").unwrap().matches(&o));
        assert!(FieldSelector::parse("status.phase=").unwrap().matches(&o));
        assert!(FieldSelector::parse("garbage").is_err());
    }

    #[test]
    fn event_field_selectors_as_kube_apiserver_has_them() {
        use weft_api::kinds::by_gvk;
        let (core, v1) = (by_gvk("v1", "Event").unwrap(), by_gvk("events.k8s.io/v1", "Event").unwrap());
        // Stored as core/v1, as kube-rs's Recorder's events are.
        let recorded = json!({"metadata": {"name": "e", "namespace": "default"}, "reason": "Started", "type": "Normal",
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default", "uid": "u1"},
            "reportingComponent": "weft.dev/x"});
        let legacy = json!({"metadata": {"name": "f"}, "source": {"component": "kubelet"}, "involvedObject": {}});
        for (kind, sel, obj, want) in [
            (core, "involvedObject.name=web,involvedObject.namespace=default,involvedObject.uid=u1", &recorded, true),
            (core, "involvedObject.kind=Pod,reason=Started,type=Normal", &recorded, true),
            (core, "involvedObject.name=other", &recorded, false),
            (core, "source=weft.dev/x", &recorded, true),
            (core, "source=kubelet", &legacy, true),
            (core, "reportingComponent=weft.dev/x", &recorded, true),
            (core, "metadata.name=e", &recorded, true),
            (v1, "regarding.name=web,reportingController=weft.dev/x", &recorded, true),
            (v1, "regarding.uid=u2", &recorded, false),
            (v1, "type!=Warning", &recorded, true),
        ] {
            assert_eq!(FieldSelector::parse_for(kind, sel).unwrap().matches(obj), want, "{sel}");
        }
        for (kind, sel) in [(core, "message=x"), (core, "regarding.name=web"), (v1, "involvedObject.name=web")] {
            let e = FieldSelector::parse_for(kind, sel).unwrap_err();
            assert!(e.starts_with("field label not supported: "), "{e}");
        }
        // Other kinds keep selecting by any path.
        let pods = by_gvk("v1", "Pod").unwrap();
        assert!(FieldSelector::parse_for(pods, "spec.nodeName=n1").is_ok());
    }
}
