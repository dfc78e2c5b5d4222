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

/// A parsed field selector: equality on dotted paths (`metadata.name=x,spec.nodeName!=n1`).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

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
            out.push((format!("/{}", k.trim().replace('.', "/")), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(ptr, eq, want)| {
            let got = match obj.pointer(ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            };
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
}
