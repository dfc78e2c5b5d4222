//! Sets of field paths (`fieldpath.Set`): a trie whose nodes are path elements, each either a
//! member (the path itself is in the set), a parent of members, or both. Its `FieldsV1` form is
//! the JSON kube-apiserver writes in `metadata.managedFields`: one key per element in upstream's
//! order, `{}` for a member without children, and `".": {}` for a member that also has children.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::path::{Path, PathElement};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Set {
    members: BTreeSet<PathElement>,
    /// Never holds an empty set.
    children: BTreeMap<PathElement, Set>,
}

/// How deep a `FieldsV1` document may nest (objects nest at most 100 levels; their field sets
/// cannot be deeper).
const MAX_DEPTH: usize = 128;

impl Set {
    pub fn new() -> Set {
        Set::default()
    }

    pub fn from_paths<'a>(paths: impl IntoIterator<Item = &'a [PathElement]>) -> Set {
        let mut s = Set::new();
        for p in paths {
            s.insert(p);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Adds `path` (the empty path adds nothing, as upstream).
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// The paths under `pe` (with `pe` taken off), if any.
    pub fn with_prefix(&self, pe: &PathElement) -> Option<&Set> {
        self.children.get(pe)
    }

    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.union_in(other);
        out
    }

    pub fn union_in(&mut self, other: &Set) {
        self.members.extend(other.members.iter().cloned());
        for (pe, c) in &other.children {
            match self.children.get_mut(pe) {
                Some(mine) => mine.union_in(c),
                None => {
                    self.children.insert(pe.clone(), c.clone());
                }
            }
        }
    }

    /// The paths of `self` that are not in `other` (path by path: a member of `other` does not
    /// take away what lies under it).
    pub fn difference(&self, other: &Set) -> Set {
        let members = self.members.iter().filter(|m| !other.members.contains(m)).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, c) in &self.children {
            let d = match other.children.get(pe) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                children.insert(pe.clone(), d);
            }
        }
        Set { members, children }
    }

    pub fn intersection(&self, other: &Set) -> Set {
        let members = self.members.iter().filter(|m| other.members.contains(m)).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, c) in &self.children {
            if let Some(o) = other.children.get(pe) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    children.insert(pe.clone(), i);
                }
            }
        }
        Set { members, children }
    }

    /// The paths of `self` none of whose prefixes (nor themselves) is a member of `other`.
    pub fn recursive_difference(&self, other: &Set) -> Set {
        let members = self.members.iter().filter(|m| !other.members.contains(m)).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, c) in &self.children {
            if other.members.contains(pe) {
                continue;
            }
            let d = match other.children.get(pe) {
                Some(o) => c.recursive_difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                children.insert(pe.clone(), d);
            }
        }
        Set { members, children }
    }

    /// Every path, in upstream's order (a node's members, then its children's paths).
    pub fn paths(&self) -> Vec<Path> {
        let mut out = vec![];
        let mut prefix = vec![];
        self.collect(&mut prefix, &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        for m in &self.members {
            let mut p = prefix.clone();
            p.push(m.clone());
            out.push(p);
        }
        for (pe, c) in &self.children {
            prefix.push(pe.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    pub(crate) fn members(&self) -> &BTreeSet<PathElement> {
        &self.members
    }

    pub(crate) fn children(&self) -> &BTreeMap<PathElement, Set> {
        &self.children
    }

    pub(crate) fn from_parts(members: BTreeSet<PathElement>, children: BTreeMap<PathElement, Set>) -> Set {
        let children = children.into_iter().filter(|(_, c)| !c.is_empty()).collect();
        Set { members, children }
    }

    /// The `FieldsV1` JSON of this set.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(self.fields_map(false))
    }

    fn fields_map(&self, include_self: bool) -> Map<String, Value> {
        let mut out = Map::new();
        if include_self {
            out.insert(".".into(), Value::Object(Map::new()));
        }
        // Members and children merged in one order; an element that is both is written once,
        // with "." among its children.
        let mut ms = self.members.iter().peekable();
        let mut cs = self.children.iter().peekable();
        loop {
            match (ms.peek(), cs.peek()) {
                (None, None) => break,
                (Some(m), Some((c, _))) if *m == *c => {
                    let (c, set) = cs.next().unwrap_or_else(|| unreachable!());
                    ms.next();
                    out.insert(c.to_fields_key(), Value::Object(set.fields_map(true)));
                }
                (Some(m), c) if c.is_none_or(|(c, _)| *m < *c) => {
                    out.insert(m.to_fields_key(), Value::Object(Map::new()));
                    ms.next();
                }
                _ => {
                    let Some((c, set)) = cs.next() else { break };
                    out.insert(c.to_fields_key(), Value::Object(set.fields_map(false)));
                }
            }
        }
        out
    }

    /// Reads a `FieldsV1` document. Keys of an unknown type are skipped, as upstream does.
    pub fn from_fields_v1(v: &Value) -> Result<Set, String> {
        let Value::Object(m) = v else {
            return Err(format!("expected a JSON object, got {}", kind_of(v)));
        };
        let (set, _) = read(m, 0)?;
        Ok(set.unwrap_or_default())
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One node: its children (if any) and whether the node itself is a member (upstream's
/// `readIterV1`: a node without children is a member).
fn read(m: &Map<String, Value>, depth: usize) -> Result<(Option<Set>, bool), String> {
    if depth > MAX_DEPTH {
        return Err(format!("the field set nests deeper than {MAX_DEPTH} levels"));
    }
    let mut is_member = false;
    let mut children: Option<Set> = None;
    for (k, v) in m {
        if k == "." {
            is_member = true;
            continue;
        }
        let Some(pe) = PathElement::from_fields_key(k)? else { continue };
        let Value::Object(inner) = v else {
            return Err(format!("{k:?}: expected a JSON object, got {}", kind_of(v)));
        };
        let (grand, child_member) = read(inner, depth + 1)?;
        let c = children.get_or_insert_with(Set::new);
        if child_member {
            c.members.insert(pe.clone());
        }
        if let Some(g) = grand.filter(|g| !g.is_empty()) {
            match c.children.get_mut(&pe) {
                Some(existing) => existing.union_in(&g),
                None => {
                    c.children.insert(pe, g);
                }
            }
        }
    }
    if children.is_none() {
        is_member = true;
    }
    Ok((children, is_member))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(n: &str) -> PathElement {
        PathElement::Field(n.into())
    }

    #[test]
    fn fields_v1_round_trip_in_upstreams_order() {
        // From a Deployment created by kubectl on a real cluster.
        let text = r#"{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:progressDeadlineSeconds":{},"f:replicas":{},"f:selector":{},"f:strategy":{"f:rollingUpdate":{".":{},"f:maxSurge":{},"f:maxUnavailable":{}},"f:type":{}},"f:template":{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:imagePullPolicy":{},"f:name":{},"f:ports":{".":{},"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{},"f:protocol":{}}}}}}}}}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let s = Set::from_fields_v1(&v).unwrap();
        assert!(s.has(&[f("spec"), f("replicas")]));
        assert!(s.has(&[f("metadata"), f("labels")]));
        assert!(!s.has(&[f("spec")]));
        assert_eq!(s.to_fields_v1().to_string(), text);
    }

    #[test]
    fn set_items_and_unknown_keys() {
        let v = json!({"f:finalizers": {".": {}, "v:\"a\"": {}, "v:\"b\"": {}}, "x:future": {}});
        let s = Set::from_fields_v1(&v).unwrap();
        assert_eq!(s.paths().len(), 3);
        assert_eq!(s.to_fields_v1(), json!({"f:finalizers": {".": {}, "v:\"a\"": {}, "v:\"b\"": {}}}));
        assert!(Set::from_fields_v1(&json!({"f:a": 1})).is_err());
        assert!(Set::from_fields_v1(&json!([])).is_err());
        assert!(Set::from_fields_v1(&json!({"k:nope": {}})).is_err());
    }

    #[test]
    fn operations() {
        let a = Set::from_paths([&[f("a"), f("b")][..], &[f("a"), f("c")][..], &[f("d")][..]]);
        let b = Set::from_paths([&[f("a"), f("b")][..], &[f("d")][..]]);
        assert_eq!(a.difference(&b).paths(), vec![vec![f("a"), f("c")]]);
        assert_eq!(a.intersection(&b), b);
        assert_eq!(b.union(&a), a);
        assert!(a.difference(&a).is_empty());
        let prefix = Set::from_paths([&[f("a")][..]]);
        assert_eq!(a.recursive_difference(&prefix).paths(), vec![vec![f("d")]]);
        assert_eq!(a.difference(&prefix), a);
    }

    #[test]
    fn deep_documents_are_refused() {
        let mut v = json!({});
        for _ in 0..200 {
            v = json!({"f:a": v});
        }
        assert!(Set::from_fields_v1(&v).is_err());
    }
}
