//! The walks over an object and its type, as structured-merge-diff's `typed` package does them:
//! validation of an applied configuration, an object's field set, the comparison of two objects
//! (added, modified, removed fields), merging a configuration into a live object, and removing
//! the fields of a set from an object.
//!
//! Objects are `Option<&Value>`: `None` is a field that is absent, `Some(Null)` one that is null
//! (upstream tells them apart too). Nesting deeper than [`MAX_DEPTH`] is treated as one leaf, so
//! no input can exhaust the stack.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

use crate::path::{self, Path, PathElement};
use crate::schema::{Atom, DEDUCED, ListKind, ListType, MapType, Scalar, Schema, TypeRef};
use crate::set::Set;
use crate::value;

/// Deeper than this, a value is one leaf (the API server admits 100 levels).
pub const MAX_DEPTH: usize = 200;

/// Which of a type's forms a value takes (upstream's `deduceAtom` + `handleAtom`).
enum Shape<'a> {
    Scalar(Scalar),
    List(&'a ListType),
    Map(&'a MapType),
}

fn shape<'a>(a: &'a Atom, v: Option<&Value>) -> Shape<'a> {
    match v {
        Some(Value::Number(_) | Value::String(_) | Value::Bool(_)) if a.scalar.is_some() => {
            Shape::Scalar(a.scalar.unwrap_or(Scalar::Untyped))
        }
        Some(Value::Array(_)) if a.list.is_some() => {
            a.list.as_ref().map(Shape::List).unwrap_or(Shape::Scalar(Scalar::Untyped))
        }
        Some(Value::Object(_)) if a.map.is_some() => {
            a.map.as_ref().map(Shape::Map).unwrap_or(Shape::Scalar(Scalar::Untyped))
        }
        _ => match (&a.map, a.scalar, &a.list) {
            (Some(m), _, _) => Shape::Map(m),
            (None, Some(s), _) => Shape::Scalar(s),
            (None, None, Some(l)) => Shape::List(l),
            (None, None, None) => Shape::Scalar(Scalar::Untyped),
        },
    }
}

fn same_shape(a: &Shape, b: &Shape) -> bool {
    matches!(
        (a, b),
        (Shape::Scalar(_), Shape::Scalar(_)) | (Shape::List(_), Shape::List(_)) | (Shape::Map(_), Shape::Map(_))
    )
}

/// The type of a map's field `k`: declared, else the map's element type, else deduced.
fn field_type(m: &MapType, k: &str) -> TypeRef {
    m.field(k).unwrap_or(DEDUCED)
}

fn as_list(v: Option<&Value>) -> Option<&Vec<Value>> {
    v.and_then(|v| v.as_array())
}

fn as_map(v: Option<&Value>) -> Option<&Map<String, Value>> {
    v.and_then(|v| v.as_object())
}

/// The path element of a list item: its keys (a map-list) or its value (a set).
pub fn item_element(s: &Schema, l: &ListType, item: &Value) -> Result<PathElement, String> {
    match &l.kind {
        ListKind::Atomic => Err("invalid indexing of non-associative list".into()),
        ListKind::Set => match item {
            Value::Object(_) => Err("associative list without keys has an element that's a map type".into()),
            Value::Array(_) => Err("not supported: associative list with lists as elements".into()),
            Value::Null => Err("associative list without keys has an element that's an explicit null".into()),
            v => Ok(PathElement::Value(v.clone())),
        },
        ListKind::Map(keys) => {
            let m = match item {
                Value::Null => return Err("associative list with keys may not have a null element".into()),
                Value::Object(m) => m,
                _ => return Err("associative list with keys may not have non-map elements".into()),
            };
            let defaults = s.atom(l.elem).map.as_ref().map(|m| &m.defaults);
            let mut fields: Vec<(String, Value)> = keys
                .iter()
                .filter_map(|k| m.get(k).or_else(|| defaults.and_then(|d| d.get(k))).map(|v| (k.clone(), v.clone())))
                .collect();
            if fields.is_empty() {
                return Err(format!(
                    "associative list with keys has an element that omits all key fields {keys:?} (and doesn't have default values for any key fields)"
                ));
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(PathElement::Key(fields))
        }
    }
}

fn push(p: &Path, pe: PathElement) -> Path {
    let mut q = p.clone();
    q.push(pe);
    q
}

// ---------------------------------------------------------------------------------------------
// Validation

/// What is wrong with an applied configuration: type errors (upstream's `ObjectToTyped`
/// errors) and fields the schema does not declare (paths without the leading dot).
#[derive(Debug, Default)]
pub struct Invalid {
    pub errors: Vec<String>,
    pub unknown: Vec<String>,
}

impl Invalid {
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty() && self.unknown.is_empty()
    }
}

/// Checks `v` against type `t`; duplicates in associative lists are errors unless
/// `allow_duplicates` (live objects may have them; applied configurations may not).
pub fn validate(s: &Schema, t: TypeRef, v: &Value, allow_duplicates: bool) -> Invalid {
    let mut out = Invalid::default();
    validate_at(s, t, v, &mut vec![], allow_duplicates, &mut out);
    out
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

fn validate_at(s: &Schema, t: TypeRef, v: &Value, p: &mut Path, dups: bool, out: &mut Invalid) {
    if p.len() > MAX_DEPTH {
        out.errors.push(format!("{}: nests deeper than {MAX_DEPTH} levels", path::to_string(p)));
        return;
    }
    let err = |out: &mut Invalid, p: &Path, m: String| {
        let at = path::to_string(p);
        out.errors.push(if at.is_empty() { m } else { format!("{at}: {m}") });
    };
    if v.is_null() {
        return;
    }
    match shape(s.atom(t), Some(v)) {
        Shape::Scalar(k) => {
            let ok = match k {
                Scalar::String => v.is_string(),
                Scalar::Numeric => v.is_number(),
                Scalar::Boolean => v.is_boolean(),
                Scalar::Untyped => !v.is_array() && !v.is_object(),
            };
            if !ok {
                let want = match k {
                    Scalar::String => "string",
                    Scalar::Numeric => "numeric (int or float)",
                    Scalar::Boolean => "boolean",
                    Scalar::Untyped => "a scalar",
                };
                err(out, p, format!("expected {want}, got {} {}", kind_name(v), value::to_string(v)));
            }
        }
        Shape::List(l) => {
            let Value::Array(items) = v else {
                return err(out, p, format!("expected list, got {}", kind_name(v)));
            };
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                if l.kind == ListKind::Atomic {
                    p.push(PathElement::Index(i));
                    validate_at(s, l.elem, item, p, dups, out);
                    p.pop();
                    continue;
                }
                match item_element(s, l, item) {
                    Err(e) => err(out, p, format!("element {i}: {e}")),
                    Ok(pe) => {
                        if !seen.insert(pe.clone()) && !dups {
                            err(out, p, format!("duplicate entries for key {pe}"));
                            continue;
                        }
                        p.push(pe);
                        validate_at(s, l.elem, item, p, dups, out);
                        p.pop();
                    }
                }
            }
        }
        Shape::Map(m) => {
            let Value::Object(fields) = v else {
                return err(out, p, format!("expected map, got {}", kind_name(v)));
            };
            for (k, fv) in fields {
                p.push(PathElement::Field(k.clone()));
                match m.field(k) {
                    Some(ft) => validate_at(s, ft, fv, p, dups, out),
                    None => out.unknown.push(path::to_string(p).trim_start_matches('.').to_string()),
                }
                p.pop();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field sets

/// The set of fields `v` sets (upstream's `ToFieldSet`): leaves, list items, and map entries
/// that are null, empty or not declared fields.
pub fn to_field_set(s: &Schema, t: TypeRef, v: &Value) -> Set {
    let mut out = Set::new();
    let mut p = vec![];
    field_set_at(s, t, v, &mut p, &mut out);
    out
}

fn field_set_at(s: &Schema, t: TypeRef, v: &Value, p: &mut Path, out: &mut Set) {
    if p.len() > MAX_DEPTH {
        out.insert(p);
        return;
    }
    match shape(s.atom(t), Some(v)) {
        Shape::Scalar(_) => out.insert(p),
        Shape::List(l) => {
            if l.kind == ListKind::Atomic {
                return out.insert(p);
            }
            let Value::Array(items) = v else { return };
            let pes: Vec<Option<PathElement>> = items.iter().map(|i| item_element(s, l, i).ok()).collect();
            let mut seen = BTreeSet::new();
            let mut dup = BTreeSet::new();
            for pe in pes.iter().flatten() {
                if !seen.insert(pe) && dup.insert(pe) {
                    out.insert(&push(p, pe.clone()));
                }
            }
            for (item, pe) in items.iter().zip(&pes) {
                let Some(pe) = pe else { continue };
                if dup.contains(pe) {
                    continue;
                }
                p.push(pe.clone());
                field_set_at(s, l.elem, item, p, out);
                out.insert(p);
                p.pop();
            }
        }
        Shape::Map(m) => {
            if m.atomic {
                return out.insert(p);
            }
            let Value::Object(fields) = v else { return };
            for (k, fv) in fields {
                p.push(PathElement::Field(k.clone()));
                field_set_at(s, field_type(m, k), fv, p, out);
                if fv.is_null() || fv.as_object().is_some_and(|o| o.is_empty()) || !m.fields.contains_key(k) {
                    out.insert(p);
                }
                p.pop();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparison

#[derive(Debug, Default)]
pub struct Comparison {
    pub removed: Set,
    pub modified: Set,
    pub added: Set,
}

impl Comparison {
    pub fn is_same(&self) -> bool {
        self.removed.is_empty() && self.modified.is_empty() && self.added.is_empty()
    }

    /// Without the fields under `exclude` (upstream's `ExcludeFields`).
    pub fn exclude(self, exclude: &Set) -> Comparison {
        Comparison {
            removed: self.removed.recursive_difference(exclude),
            modified: self.modified.recursive_difference(exclude),
            added: self.added.recursive_difference(exclude),
        }
    }
}

/// What changed from `lhs` to `rhs` (upstream's `Compare`).
pub fn compare(s: &Schema, t: TypeRef, lhs: &Value, rhs: &Value) -> Comparison {
    let mut c = Comparison::default();
    let mut p = vec![];
    let mut in_leaf = false;
    compare_at(s, t, Some(lhs), Some(rhs), &mut p, &mut c, &mut in_leaf);
    c
}

fn compare_at(
    s: &Schema,
    t: TypeRef,
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    p: &mut Path,
    c: &mut Comparison,
    in_leaf: &mut bool,
) {
    if lhs.is_none() && rhs.is_none() {
        return;
    }
    let a = s.atom(t);
    let (sl, sr) = (shape(a, lhs), shape(a, rhs));
    if rhs.is_none() {
        compare_shape(s, &sl, lhs, rhs, p, c, in_leaf);
    } else if lhs.is_none() || same_shape(&sl, &sr) {
        compare_shape(s, &sr, lhs, rhs, p, c, in_leaf);
    } else {
        let mut other_leaf = *in_leaf;
        compare_shape(s, &sl, lhs, rhs, p, c, &mut other_leaf);
        compare_shape(s, &sr, lhs, rhs, p, c, in_leaf);
    }
    if !*in_leaf {
        if lhs.is_none() {
            c.added.insert(p);
        } else if rhs.is_none() {
            c.removed.insert(p);
        }
    }
}

fn compare_leaf(lhs: Option<&Value>, rhs: Option<&Value>, p: &Path, c: &mut Comparison, in_leaf: &mut bool) {
    if *in_leaf {
        return;
    }
    *in_leaf = true;
    match (lhs, rhs) {
        (None, _) => c.added.insert(p),
        (_, None) => c.removed.insert(p),
        (Some(l), Some(r)) if !value::equals(l, r) => c.modified.insert(p),
        _ => {}
    }
}

fn compare_shape(
    s: &Schema,
    sh: &Shape,
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    p: &mut Path,
    c: &mut Comparison,
    in_leaf: &mut bool,
) {
    if p.len() > MAX_DEPTH {
        return compare_leaf(lhs, rhs, p, c, in_leaf);
    }
    match sh {
        Shape::Scalar(_) => compare_leaf(lhs, rhs, p, c, in_leaf),
        Shape::List(l) => {
            let (ll, rl) = (as_list(lhs), as_list(rhs));
            let empty = ll.is_none_or(|x| x.is_empty()) && rl.is_none_or(|x| x.is_empty());
            if l.kind == ListKind::Atomic || empty {
                return compare_leaf(lhs, rhs, p, c, in_leaf);
            }
            compare_list_items(
                s,
                l,
                ll.map(|v| v.as_slice()).unwrap_or(&[]),
                rl.map(|v| v.as_slice()).unwrap_or(&[]),
                p,
                c,
            );
        }
        Shape::Map(m) => {
            let (lm, rm) = (as_map(lhs), as_map(rhs));
            let empty = lm.is_none_or(|x| x.is_empty()) && rm.is_none_or(|x| x.is_empty());
            if m.atomic || empty {
                return compare_leaf(lhs, rhs, p, c, in_leaf);
            }
            let empty_map = Map::new();
            let (lm, rm) = (lm.unwrap_or(&empty_map), rm.unwrap_or(&empty_map));
            for (k, lv) in lm {
                p.push(PathElement::Field(k.clone()));
                compare_at(s, field_type(m, k), Some(lv), rm.get(k), p, c, &mut false);
                p.pop();
            }
            for (k, rv) in rm {
                if lm.contains_key(k) {
                    continue;
                }
                p.push(PathElement::Field(k.clone()));
                compare_at(s, field_type(m, k), None, Some(rv), p, c, &mut false);
                p.pop();
            }
        }
    }
}

/// Items of an associative list grouped by their element, in first-seen order.
fn group_items<'v>(
    s: &Schema,
    l: &ListType,
    items: &'v [Value],
) -> (Vec<PathElement>, HashMap<String, Vec<&'v Value>>) {
    let mut order = vec![];
    let mut by: HashMap<String, Vec<&Value>> = HashMap::new();
    for item in items {
        let Ok(pe) = item_element(s, l, item) else { continue };
        let key = pe.to_fields_key();
        let e = by.entry(key).or_default();
        if e.is_empty() {
            order.push(pe);
        }
        e.push(item);
    }
    (order, by)
}

fn compare_list_items(s: &Schema, l: &ListType, lhs: &[Value], rhs: &[Value], p: &mut Path, c: &mut Comparison) {
    let (lorder, lby) = group_items(s, l, lhs);
    let (rorder, rby) = group_items(s, l, rhs);
    let mut all = lorder;
    all.extend(rorder.into_iter().filter(|pe| !lby.contains_key(&pe.to_fields_key())));
    for pe in all {
        let key = pe.to_fields_key();
        let ll = lby.get(&key).map(|v| v.as_slice()).unwrap_or(&[]);
        let rl = rby.get(&key).map(|v| v.as_slice()).unwrap_or(&[]);
        p.push(pe);
        match (ll.len(), rl.len()) {
            (0, 0) => {}
            (0..=1, 0..=1) => compare_at(s, l.elem, ll.first().copied(), rl.first().copied(), p, c, &mut false),
            (2.., 2..) => {
                if ll.len() != rl.len() || ll.iter().zip(rl).any(|(a, b)| !value::equals(a, b)) {
                    c.modified.insert(p);
                }
            }
            (2.., _) => {
                if let Some(r) = rl.first() {
                    compare_at(s, l.elem, None, Some(r), p, c, &mut false);
                }
                c.removed.insert(p);
            }
            (_, _) => {
                if let Some(l0) = ll.first() {
                    compare_at(s, l.elem, Some(l0), None, p, c, &mut false);
                }
                c.added.insert(p);
            }
        }
        p.pop();
    }
}

// ---------------------------------------------------------------------------------------------
// Merge

/// `rhs` (an applied configuration) merged into `lhs` (the live object): leaves and atomic
/// values from `rhs`, granular maps by key, associative lists by item, in upstream's order.
/// Errors for lists whose items cannot be told apart (`rhs` must have no duplicates).
pub fn merge(s: &Schema, t: TypeRef, lhs: &Value, rhs: &Value) -> Result<Value, String> {
    let mut p = vec![];
    Ok(merge_at(s, t, Some(lhs), Some(rhs), &mut p)?.unwrap_or(Value::Object(Map::new())))
}

fn merge_at(
    s: &Schema,
    t: TypeRef,
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    p: &mut Path,
) -> Result<Option<Value>, String> {
    let a = s.atom(t);
    let (sl, sr) = (shape(a, lhs), shape(a, rhs));
    let sh = if rhs.is_none() { sl } else { sr };
    if p.len() > MAX_DEPTH {
        return Ok(rhs.or(lhs).cloned());
    }
    let leaf = || Ok(rhs.or(lhs).cloned());
    match sh {
        Shape::Scalar(_) => leaf(),
        Shape::List(l) => {
            let (ll, rl) = (as_list(lhs), as_list(rhs));
            let empty = ll.is_none_or(|x| x.is_empty()) && rl.is_none_or(|x| x.is_empty());
            if l.kind == ListKind::Atomic || empty {
                return leaf();
            }
            let out =
                merge_list(s, l, ll.map(|v| v.as_slice()).unwrap_or(&[]), rl.map(|v| v.as_slice()).unwrap_or(&[]), p)?;
            Ok((!out.is_empty()).then_some(Value::Array(out)))
        }
        Shape::Map(m) => {
            let (lm, rm) = (as_map(lhs), as_map(rhs));
            let empty = lm.is_none_or(|x| x.is_empty()) && rm.is_none_or(|x| x.is_empty());
            if m.atomic || empty {
                return leaf();
            }
            let empty_map = Map::new();
            let (lm, rm) = (lm.unwrap_or(&empty_map), rm.unwrap_or(&empty_map));
            let mut out = Map::new();
            for (k, lv) in lm {
                p.push(PathElement::Field(k.clone()));
                if let Some(v) = merge_at(s, field_type(m, k), Some(lv), rm.get(k), p)? {
                    out.insert(k.clone(), v);
                }
                p.pop();
            }
            for (k, rv) in rm {
                if lm.contains_key(k) {
                    continue;
                }
                p.push(PathElement::Field(k.clone()));
                if let Some(v) = merge_at(s, field_type(m, k), None, Some(rv), p)? {
                    out.insert(k.clone(), v);
                }
                p.pop();
            }
            Ok((!out.is_empty()).then_some(Value::Object(out)))
        }
    }
}

/// Items by element: the index of the one item with it, `None` for a duplicated element.
type Observed = BTreeMap<PathElement, Option<usize>>;

/// Upstream's `visitListItems` for merging: live items keep their order, applied items that are
/// new come where the configuration puts them relative to the items both share.
fn merge_list(s: &Schema, l: &ListType, lhs: &[Value], rhs: &[Value], p: &mut Path) -> Result<Vec<Value>, String> {
    let index = |items: &[Value], dups_ok: bool| -> Result<(Vec<PathElement>, Observed), String> {
        let mut pes = vec![];
        let mut seen: BTreeMap<PathElement, Option<usize>> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let pe = item_element(s, l, item).map_err(|e| format!("{}: element {i}: {e}", path::to_string(p)))?;
            match seen.get_mut(&pe) {
                Some(slot) if dups_ok => *slot = None,
                Some(_) => return Err(format!("{}: duplicate entries for key {pe}", path::to_string(p))),
                None => {
                    seen.insert(pe.clone(), Some(i));
                }
            }
            pes.push(pe);
        }
        Ok((pes, seen))
    };
    let (rpes, robs) = index(rhs, false)?;
    let (lpes, lobs) = index(lhs, true)?;
    let mut shared: std::collections::VecDeque<&PathElement> = rpes.iter().filter(|pe| lobs.contains_key(pe)).collect();
    let mut next_shared = shared.pop_front();
    let mut merged_rhs: BTreeSet<PathElement> = BTreeSet::new();
    let mut out = Vec::with_capacity(lhs.len().max(rhs.len()));
    let (mut li, mut ri) = (0, 0);
    let child = |obs: &BTreeMap<PathElement, Option<usize>>, items: &'_ [Value], pe: &PathElement| -> Option<Value> {
        match obs.get(pe) {
            Some(Some(i)) => items.get(*i).cloned(),
            Some(None) => Some(Value::Null),
            None => None,
        }
    };
    let item = |pe: &PathElement,
                lc: Option<Value>,
                rc: Option<Value>,
                out: &mut Vec<Value>,
                p: &mut Path|
     -> Result<(), String> {
        p.push(pe.clone());
        let m = merge_at(s, l.elem, lc.as_ref(), rc.as_ref(), p)?;
        p.pop();
        out.extend(m);
        Ok(())
    };
    while li < lpes.len() || ri < rpes.len() {
        if li < lpes.len() && ri < rpes.len() {
            let pe = &lpes[li];
            if *pe == rpes[ri] {
                merged_rhs.insert(pe.clone());
                item(pe, child(&lobs, lhs, pe), child(&robs, rhs, pe), &mut out, p)?;
                li += 1;
                ri += 1;
                next_shared = shared.pop_front();
                continue;
            }
            if robs.contains_key(pe) && next_shared.is_some_and(|n| n != pe) {
                li += 1;
                continue;
            }
        }
        if li < lpes.len() {
            let pe = &lpes[li];
            if !robs.contains_key(pe) {
                item(pe, lhs.get(li).cloned(), None, &mut out, p)?;
                li += 1;
                continue;
            } else if merged_rhs.contains(pe) {
                li += 1;
            }
        }
        if ri < rpes.len() {
            let pe = &rpes[ri];
            merged_rhs.insert(pe.clone());
            item(pe, child(&lobs, lhs, pe), child(&robs, rhs, pe), &mut out, p)?;
            ri += 1;
            if next_shared.is_some_and(|n| n == pe) {
                next_shared = shared.pop_front();
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Removal

/// `v` without the fields of `set` (upstream's `RemoveItems`). What is left of a map or list
/// that loses everything is null, as upstream leaves it.
pub fn remove_items(s: &Schema, t: TypeRef, v: &Value, set: &Set) -> Value {
    remove_at(s, t, v, set, 0)
}

fn remove_at(s: &Schema, t: TypeRef, v: &Value, set: &Set, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return v.clone();
    }
    match shape(s.atom(t), Some(v)) {
        Shape::Scalar(_) => v.clone(),
        Shape::List(l) => {
            let Value::Array(items) = v else { return Value::Null };
            if items.is_empty() || l.kind == ListKind::Atomic {
                return Value::Null;
            }
            let mut out = vec![];
            for item in items {
                let Ok(pe) = item_element(s, l, item) else {
                    out.push(item.clone());
                    continue;
                };
                if set.has(std::slice::from_ref(&pe)) {
                    continue;
                }
                match set.with_prefix(&pe) {
                    Some(sub) => out.push(remove_at(s, l.elem, item, sub, depth + 1)),
                    None => out.push(item.clone()),
                }
            }
            if out.is_empty() { Value::Null } else { Value::Array(out) }
        }
        Shape::Map(m) => {
            let Value::Object(fields) = v else { return Value::Null };
            if fields.is_empty() || m.atomic {
                return Value::Null;
            }
            let mut out = Map::new();
            for (k, fv) in fields {
                let pe = PathElement::Field(k.clone());
                if set.has(std::slice::from_ref(&pe)) {
                    continue;
                }
                match set.with_prefix(&pe) {
                    Some(sub) => {
                        out.insert(k.clone(), remove_at(s, field_type(m, k), fv, sub, depth + 1));
                    }
                    None => {
                        out.insert(k.clone(), fv.clone());
                    }
                }
            }
            if out.is_empty() { Value::Null } else { Value::Object(out) }
        }
    }
}

/// `set` with every declared struct field on its paths a member too (upstream's
/// `EnsureNamedFieldsAreMembers`), so that pruning removes a struct a manager no longer sets.
pub fn ensure_named_fields(s: &Schema, t: TypeRef, set: &Set) -> Set {
    ensure_at(s, t, set, 0)
}

fn ensure_at(s: &Schema, t: TypeRef, set: &Set, depth: usize) -> Set {
    let a = s.atom(t);
    let mut members = set.members().clone();
    let mut children = BTreeMap::new();
    for (pe, c) in set.children() {
        let ct = match (pe, &a.map, &a.list) {
            (PathElement::Field(f), Some(m), _) => {
                if m.fields.contains_key(f) {
                    members.insert(pe.clone());
                }
                field_type(m, f)
            }
            (PathElement::Field(_), None, _) => DEDUCED,
            (_, _, Some(l)) => l.elem,
            _ => DEDUCED,
        };
        let c = if depth > MAX_DEPTH { c.clone() } else { ensure_at(s, ct, c, depth + 1) };
        children.insert(pe.clone(), c);
    }
    Set::from_parts(members, children)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::fixtures;
    use serde_json::json;

    fn deployment(s: &Schema) -> TypeRef {
        s.kind("apps", "v1", "Deployment").unwrap()
    }

    #[test]
    fn field_set_matches_upstreams_for_an_applied_deployment() {
        let s = Schema::new(&fixtures::defs());
        let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "x", "labels": {"app": "x"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}},
                "template": {"metadata": {"labels": {"app": "x"}},
                    "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}}});
        let set = to_field_set(&s, deployment(&s), &cfg);
        assert_eq!(
            set.to_fields_v1(),
            json!({"f:apiVersion": {}, "f:kind": {}, "f:metadata": {"f:labels": {"f:app": {}}, "f:name": {}},
                "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {"f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}}}}}})
        );
    }

    #[test]
    fn compare_reports_added_modified_removed() {
        let s = Schema::new(&fixtures::defs());
        let a = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b"}]}}}});
        let b = json!({"metadata": {"labels": {"x": "y"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "1"}]}}}});
        let c = compare(&s, deployment(&s), &a, &b);
        let paths = |x: &Set| x.paths().iter().map(|p| path::to_string(p)).collect::<Vec<_>>();
        assert_eq!(paths(&c.modified), vec![".spec.replicas"]);
        assert_eq!(paths(&c.added), vec![".metadata", ".metadata.labels", ".metadata.labels.x"]);
        assert_eq!(
            paths(&c.removed),
            vec![r#".spec.template.spec.containers[name="b"]"#, r#".spec.template.spec.containers[name="b"].name"#]
        );
        assert!(compare(&s, deployment(&s), &a, &a).is_same());
    }

    #[test]
    fn merge_keeps_live_fields_and_orders_new_items_as_applied() {
        let s = Schema::new(&fixtures::defs());
        let live = json!({"spec": {"replicas": 1, "template": {"spec": {
            "containers": [{"name": "a", "image": "1", "args": ["x"]}, {"name": "b", "image": "2"}],
            "nodeSelector": {"k": "v", "k2": "v2"}}}}});
        let cfg = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "3"}, {"name": "a", "image": "9", "args": ["y"]}],
            "nodeSelector": {"k": "w"}}}}});
        let m = merge(&s, deployment(&s), &live, &cfg).unwrap();
        assert_eq!(m["spec"]["replicas"], 1);
        let names: Vec<&str> = m["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert_eq!(m["spec"]["template"]["spec"]["containers"][1], json!({"name": "a", "image": "9", "args": ["y"]}));
        // An atomic map is replaced whole.
        assert_eq!(m["spec"]["template"]["spec"]["nodeSelector"], json!({"k": "w"}));
        // A set list merges by value.
        let live = json!({"metadata": {"finalizers": ["a", "b"]}});
        let m = merge(&s, deployment(&s), &live, &json!({"metadata": {"finalizers": ["c", "b"]}})).unwrap();
        assert_eq!(m["metadata"]["finalizers"], json!(["a", "c", "b"]));
    }

    #[test]
    fn hostile_configurations_are_errors_not_panics() {
        let s = Schema::new(&fixtures::defs());
        let d = deployment(&s);
        let dup = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}});
        let inv = validate(&s, d, &dup, false);
        assert_eq!(inv.errors, vec![r#".spec.template.spec.containers: duplicate entries for key [name="a"]"#]);
        assert!(validate(&s, d, &dup, true).is_empty());
        assert!(merge(&s, d, &json!({}), &dup).is_err());
        // A duplicated live item is merged as one (upstream keeps the applied one).
        assert!(
            merge(&s, d, &dup, &json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}}}))
                .is_ok()
        );
        let wrong = json!({"spec": {"replicas": "3", "template": {"spec": {"containers": [{"name": "c", "env": [{"value": "v"}]}, 7, {"name": 5}]}}},
            "metadata": {"labels": [1]}, "bogus": 1});
        let inv = validate(&s, d, &wrong, false);
        assert_eq!(inv.unknown, vec!["bogus"]);
        assert!(
            inv.errors.contains(&r#".spec.replicas: expected numeric (int or float), got string "3""#.to_string()),
            "{:?}",
            inv.errors
        );
        assert!(inv.errors.iter().any(|e| e.contains("omits all key fields")));
        assert!(
            inv.errors
                .iter()
                .any(|e| e.contains("element 1: associative list with keys may not have non-map elements"))
        );
        assert!(
            inv.errors
                .iter()
                .any(|e| e == ".spec.template.spec.containers[name=5].name: expected string, got number 5")
        );
        assert!(inv.errors.iter().any(|e| e == ".metadata.labels: expected map, got list"));
        // The walks never panic on it either.
        let _ = to_field_set(&s, d, &wrong);
        let _ = compare(&s, d, &wrong, &json!({}));
        let _ = merge(&s, d, &wrong, &json!({"spec": {"replicas": 1}}));
        // Deep values are one leaf past the limit.
        let mut deep = json!(1);
        for _ in 0..(MAX_DEPTH + 50) {
            deep = json!({"a": deep});
        }
        let cm = s.kind("", "v1", "ConfigMap").unwrap();
        let obj = json!({"extra": deep});
        assert!(!validate(&s, cm, &obj, false).errors.is_empty());
        let _ = to_field_set(&s, cm, &obj);
        let _ = compare(&s, cm, &obj, &json!({}));
        let _ = merge(&s, cm, &obj, &obj).unwrap();
    }

    #[test]
    fn remove_and_ensure_named_fields() {
        let s = Schema::new(&fixtures::defs());
        let d = deployment(&s);
        let v = json!({"spec": {"replicas": 1, "strategy": {"type": "Recreate"}}, "metadata": {"labels": {"a": "1"}}});
        let set = Set::from_paths([
            &[
                PathElement::Field("spec".into()),
                PathElement::Field("strategy".into()),
                PathElement::Field("type".into()),
            ][..],
            &[
                PathElement::Field("metadata".into()),
                PathElement::Field("labels".into()),
                PathElement::Field("a".into()),
            ][..],
        ]);
        let out = remove_items(&s, d, &v, &set);
        assert_eq!(out, json!({"spec": {"replicas": 1, "strategy": null}, "metadata": {"labels": null}}));
        let ensured = ensure_named_fields(&s, d, &set);
        // spec, spec.strategy and metadata.labels are declared fields; labels' keys are not.
        assert!(ensured.has(&[PathElement::Field("spec".into())]));
        assert!(ensured.has(&[PathElement::Field("spec".into()), PathElement::Field("strategy".into())]));
        assert!(ensured.has(&[PathElement::Field("metadata".into()), PathElement::Field("labels".into())]));
        // Both top-level fields are members now: nothing is left.
        assert_eq!(remove_items(&s, d, &v, &ensured), Value::Null);
    }
}
