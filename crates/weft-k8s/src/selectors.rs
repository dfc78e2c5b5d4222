//! Label selectors as Kubernetes evaluates them: the string syntax of `?labelSelector=`
//! (`app=web,tier in (a,b),!legacy`), `metav1.LabelSelector` objects (matchLabels and
//! matchExpressions), and a Service's map selector.
//!
//! As the API defines them: a LabelSelector `{}` selects everything, a missing (nil) one
//! nothing; an unknown operator, or `In`/`NotIn` without values, is an error (and matches
//! nothing where an answer must be given).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    /// The key is absent or has another value.
    NotEquals(String, String),
    In(String, Vec<String>),
    /// The key is absent or its value is none of these.
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    fn matches(&self, value: Option<&str>) -> bool {
        match self {
            Requirement::Equals(_, v) => value == Some(v.as_str()),
            Requirement::NotEquals(_, v) => value != Some(v.as_str()),
            Requirement::In(_, vs) => value.is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(_, vs) => value.is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(_) => value.is_some(),
            Requirement::DoesNotExist(_) => value.is_none(),
        }
    }
}

/// A selector: all requirements must hold. `Nothing` is the nil selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Requirements(Vec<Requirement>),
    Nothing,
}

impl Default for Selector {
    fn default() -> Self {
        Selector::everything()
    }
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (vec![], 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(|p| p.trim()).filter(|p| !p.is_empty()).collect()
}

fn set_values(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| format!("expected (values) in {s:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

impl Selector {
    pub fn everything() -> Selector {
        Selector::Requirements(vec![])
    }

    /// Selects everything (no requirement).
    pub fn is_everything(&self) -> bool {
        matches!(self, Selector::Requirements(r) if r.is_empty())
    }

    pub fn requirements(&self) -> &[Requirement] {
        match self {
            Selector::Requirements(r) => r,
            Selector::Nothing => &[],
        }
    }

    /// The string syntax (`app=web,tier in (a,b),tier notin (c),env!=dev,!legacy,gpu`). Keys
    /// are not checked here (the caller knows its key rules); an empty key is an error.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = vec![];
        for part in split_top(s) {
            let r = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set_values(v)?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set_values(v)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::DoesNotExist(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            if r.key().is_empty() {
                return Err(format!("a requirement without a key ({part:?}) in selector {s:?}"));
            }
            reqs.push(r);
        }
        Ok(Selector::Requirements(reqs))
    }

    /// matchLabels semantics: every key present with its value (an empty map: everything).
    pub fn from_map(m: &BTreeMap<String, String>) -> Selector {
        Selector::Requirements(m.iter().map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect())
    }

    /// Does it select the labels `label` looks up?
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Selector::Requirements(r) => r.iter().all(|r| r.matches(label(r.key()))),
            Selector::Nothing => false,
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }
}

/// Does a Service's selector select a pod with these labels? A Service without a selector (or
/// with an empty one, which the API stores as none) selects no pods: its endpoints are
/// written by hand.
pub fn service_selects(selector: Option<&BTreeMap<String, String>>, labels: Option<&BTreeMap<String, String>>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else { return false };
    sel.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

#[cfg(feature = "objects")]
mod objects {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    impl Selector {
        /// A `metav1.LabelSelector` as `LabelSelectorAsSelector` reads it: None is nothing,
        /// `{}` everything; an unknown operator or a misused `values` is an error.
        pub fn from_label_selector(sel: Option<&LabelSelector>) -> Result<Selector, String> {
            let Some(sel) = sel else { return Ok(Selector::Nothing) };
            let mut reqs: Vec<Requirement> =
                sel.match_labels.iter().flatten().map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect();
            for e in sel.match_expressions.iter().flatten() {
                let values = e.values.clone().unwrap_or_default();
                let key = e.key.clone();
                reqs.push(match e.operator.as_str() {
                    "In" | "NotIn" if values.is_empty() => {
                        return Err(format!("{key}: values must be non-empty for operator {}", e.operator));
                    }
                    "Exists" | "DoesNotExist" if !values.is_empty() => {
                        return Err(format!("{key}: values must be empty for operator {}", e.operator));
                    }
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    op => return Err(format!("{key}: {op:?} is not a valid label selector operator")),
                });
            }
            Ok(Selector::Requirements(reqs))
        }
    }

    /// Does `sel` select these labels? An invalid selector selects nothing.
    pub fn label_selector_matches(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
        Selector::from_label_selector(sel).is_ok_and(|s| s.matches(labels))
    }
}

#[cfg(feature = "objects")]
pub use objects::label_selector_matches;

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_string_syntax() {
        let l = labels(&[("app", "web"), ("tier", "b")]);
        for (s, want) in [
            ("", true),
            ("app=web", true),
            ("app==web,tier=b", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("tier in (a,b)", true),
            ("tier in (a, c)", false),
            ("tier notin (a,c)", true),
            ("missing notin (a)", true),
            ("missing in (a)", false),
            ("app", true),
            ("!app", false),
            ("!legacy", true),
            (" app = web , !legacy ", true),
        ] {
            assert_eq!(Selector::parse(s).unwrap().matches(&l), want, "{s}");
        }
        assert!(Selector::parse("").unwrap().is_everything());
        assert_eq!(Selector::parse("a,b in (x)").unwrap().requirements().len(), 2);
    }

    #[test]
    fn hostile_strings_are_errors_not_panics() {
        for s in ["tier in (a", "tier in a)", "tier notin", "=x", "!", "!=v", "(", ")", "in ()"] {
            let r = Selector::parse(s);
            // Either a clear error, or requirements that parse to something well-formed.
            if let Ok(sel) = &r {
                assert!(sel.requirements().iter().all(|q| !q.key().is_empty()), "{s}: {r:?}");
            }
        }
        assert!(Selector::parse("tier in (a").is_err());
        assert!(Selector::parse("=x").is_err());
        assert!(Selector::parse("!").is_err());
        assert!(Selector::parse("é=ü,\u{0}").is_ok_and(|s| !s.matches(&labels(&[]))));
    }

    #[test]
    fn a_service_selector_selects_only_when_it_says_something() {
        let sel = labels(&[("app", "web")]);
        assert!(service_selects(Some(&sel), Some(&labels(&[("app", "web"), ("x", "y")]))));
        assert!(!service_selects(Some(&sel), Some(&labels(&[("app", "db")]))));
        assert!(!service_selects(Some(&sel), None));
        assert!(!service_selects(Some(&labels(&[])), Some(&labels(&[("app", "web")]))));
        assert!(!service_selects(None, Some(&labels(&[("app", "web")]))));
    }

    #[test]
    fn a_map_selector_is_match_labels() {
        assert!(Selector::from_map(&labels(&[])).matches(&labels(&[("a", "b")])));
        assert!(Selector::from_map(&labels(&[("a", "b")])).matches(&labels(&[("a", "b"), ("c", "d")])));
        assert!(!Selector::from_map(&labels(&[("a", "b")])).matches(&labels(&[("a", "c")])));
    }

    #[cfg(feature = "objects")]
    #[test]
    fn label_selector_objects_as_the_api_defines_them() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
        let l = labels(&[("app", "web"), ("tier", "b")]);
        // `{}` selects everything, nil nothing.
        assert!(label_selector_matches(Some(&sel(serde_json::json!({}))), &l));
        assert!(label_selector_matches(Some(&sel(serde_json::json!({}))), &labels(&[])));
        assert!(!label_selector_matches(None, &l));
        let s = sel(serde_json::json!({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "app", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"}]}));
        assert!(label_selector_matches(Some(&s), &l));
        assert!(!label_selector_matches(Some(&s), &labels(&[("app", "web"), ("tier", "c")])));
        assert!(!label_selector_matches(Some(&s), &labels(&[("app", "web"), ("tier", "b"), ("env", "prod")])));
        assert!(!label_selector_matches(Some(&s), &labels(&[("app", "web"), ("tier", "b"), ("legacy", "")])));
        // Unknown operators and misused values: errors, and nothing matches.
        for bad in [
            serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["web"]}]}),
            serde_json::json!({"matchExpressions": [{"key": "app", "operator": "in", "values": ["web"]}]}),
            serde_json::json!({"matchExpressions": [{"key": "app", "operator": "In"}]}),
            serde_json::json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": []}]}),
            serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}),
        ] {
            let s = sel(bad.clone());
            assert!(Selector::from_label_selector(Some(&s)).is_err(), "{bad}");
            assert!(!label_selector_matches(Some(&s), &l), "{bad}");
        }
    }
}
