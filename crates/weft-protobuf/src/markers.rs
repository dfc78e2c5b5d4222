//! The Kubernetes code-generator markers (`// +listType=map`, `// +listMapKey=port`,
//! `// +patchMergeKey=name`, `// +patchStrategy=merge`, `// +mapType=atomic`,
//! `// +structType=atomic`) that the vendored `generated.proto` files carry as comments.
//!
//! kube-apiserver turns these Go markers into the `x-kubernetes-*` extensions of its OpenAPI
//! schemas; k8s-openapi's schemas lack them, so `weft-openapi` reads them from here. The comments
//! come from the descriptor set's source info (`build.rs` compiles it in).

use std::collections::HashMap;
use std::sync::OnceLock;

use prost_reflect::{FieldDescriptor, FileDescriptor, MessageDescriptor};

use super::{INLINE, pool};

/// The markers on one field or one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Markers {
    /// `+listType`: `atomic`, `set` or `map`.
    pub list_type: Option<String>,
    /// `+listMapKey`, in the order written.
    pub list_map_keys: Vec<String>,
    /// `+mapType`: `atomic` or `granular`.
    pub map_type: Option<String>,
    /// `+structType`: `atomic` or `granular`.
    pub struct_type: Option<String>,
    /// `+patchStrategy`: `merge`, `retainKeys` or `merge,retainKeys`.
    pub patch_strategy: Option<String>,
    /// `+patchMergeKey`.
    pub patch_merge_key: Option<String>,
}

impl Markers {
    pub fn is_empty(&self) -> bool {
        *self == Markers::default()
    }

    /// Reads the markers out of a comment block.
    pub fn parse(comment: &str) -> Markers {
        let mut m = Markers::default();
        for line in comment.lines() {
            let Some((key, value)) = line.trim().strip_prefix('+').and_then(|l| l.split_once('=')) else {
                continue;
            };
            let value = value.trim().to_string();
            // The first of a repeated marker wins, as in the Go generators.
            match key.trim() {
                "listType" => drop(m.list_type.get_or_insert(value)),
                "listMapKey" => m.list_map_keys.push(value),
                "mapType" => drop(m.map_type.get_or_insert(value)),
                "structType" => drop(m.struct_type.get_or_insert(value)),
                "patchStrategy" => drop(m.patch_strategy.get_or_insert(value)),
                "patchMergeKey" => drop(m.patch_merge_key.get_or_insert(value)),
                _ => {}
            }
        }
        m
    }
}

/// The markers of every declaration that has any, by (file, source path): read once, so that
/// a lookup does not scan the files' tens of thousands of source locations.
fn index() -> &'static HashMap<(String, Vec<i32>), Markers> {
    static INDEX: OnceLock<HashMap<(String, Vec<i32>), Markers>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut out = HashMap::new();
        for file in pool().files() {
            let Some(info) = file.file_descriptor_proto().source_code_info.as_ref() else { continue };
            for l in &info.location {
                let m = l.leading_comments.as_deref().map(Markers::parse).unwrap_or_default();
                if !m.is_empty() {
                    out.insert((file.name().to_string(), l.path.clone()), m);
                }
            }
        }
        out
    })
}

fn at(file: &FileDescriptor, path: &[i32]) -> Markers {
    index().get(&(file.name().to_string(), path.to_vec())).cloned().unwrap_or_default()
}

/// The markers on a message (`+structType`), by its full protobuf name
/// (`k8s.io.api.core.v1.LocalObjectReference`); `None` for an unknown message.
pub fn of_message(message: &str) -> Option<Markers> {
    let m = pool().get_message_by_name(message)?;
    Some(at(&m.parent_file(), m.path()))
}

/// The markers on field `field` (its JSON name, which is its `.proto` name) of message `message`
/// (full protobuf name). Fields of Go structs embedded inline (`Volume.volumeSource`, ...) count as
/// the parent's, as they do in JSON. `None` when the message or the field is unknown.
pub fn of_field(message: &str, field: &str) -> Option<Markers> {
    let f = find_field(&pool().get_message_by_name(message)?, field, 0)?;
    Some(at(&f.parent_file(), f.path()))
}

fn find_field(m: &MessageDescriptor, field: &str, depth: usize) -> Option<FieldDescriptor> {
    if let Some(f) = m.get_field_by_name(field) {
        return Some(f);
    }
    if depth > 4 {
        return None;
    }
    m.fields()
        .filter(|f| INLINE.iter().any(|(name, _)| *name == f.name()))
        .filter_map(|f| f.kind().as_message().cloned())
        .find_map(|inner| find_field(&inner, field, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORE: &str = "k8s.io.api.core.v1";
    const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

    fn field(m: &str, f: &str) -> Markers {
        of_field(m, f).unwrap_or_else(|| panic!("{m}.{f} is known"))
    }

    #[test]
    fn service_ports_are_a_map_keyed_by_port_and_protocol() {
        let m = field(&format!("{CORE}.ServiceSpec"), "ports");
        assert_eq!(m.list_type.as_deref(), Some("map"));
        assert_eq!(m.list_map_keys, ["port", "protocol"]);
        assert_eq!(m.patch_merge_key.as_deref(), Some("port"));
        assert_eq!(m.patch_strategy.as_deref(), Some("merge"));
    }

    #[test]
    fn containers_merge_by_name() {
        let m = field(&format!("{CORE}.PodSpec"), "containers");
        assert_eq!(m.patch_merge_key.as_deref(), Some("name"));
        assert_eq!(m.patch_strategy.as_deref(), Some("merge"));
        let m = field(&format!("{CORE}.Container"), "ports");
        assert_eq!(m.list_type.as_deref(), Some("map"));
        assert_eq!(m.list_map_keys, ["containerPort", "protocol"]);
    }

    #[test]
    fn object_meta_lists() {
        let m = field(&format!("{META}.ObjectMeta"), "finalizers");
        assert_eq!(m.list_type.as_deref(), Some("set"));
        assert_eq!(m.patch_strategy.as_deref(), Some("merge"));
        let m = field(&format!("{META}.ObjectMeta"), "ownerReferences");
        assert_eq!(m.list_type.as_deref(), Some("map"));
        assert_eq!(m.list_map_keys, ["uid"]);
        assert_eq!(m.patch_merge_key.as_deref(), Some("uid"));
        assert!(field(&format!("{META}.ObjectMeta"), "labels").is_empty());
    }

    #[test]
    fn message_and_map_markers() {
        let m = of_message(&format!("{CORE}.LocalObjectReference")).expect("known");
        assert_eq!(m.struct_type.as_deref(), Some("atomic"));
        assert!(of_message(&format!("{CORE}.PodSpec")).expect("known").is_empty());
        assert_eq!(field(&format!("{CORE}.PodSpec"), "nodeSelector").map_type.as_deref(), Some("atomic"));
    }

    #[test]
    fn inline_fields_count_as_the_parents() {
        // Volume embeds VolumeSource; its `projected` field is the Volume's in JSON.
        assert!(of_field(&format!("{CORE}.Volume"), "projected").is_some());
        assert!(of_field(&format!("{CORE}.Volume"), "noSuchField").is_none());
        assert!(of_field("no.such.Message", "x").is_none());
    }

    #[test]
    fn parse_ignores_prose_and_keeps_the_first() {
        let m = Markers::parse(" Some prose + more.\n +listType=atomic\n +listType=set\n +optional\n");
        assert_eq!(m.list_type.as_deref(), Some("atomic"));
        assert_eq!(Markers { list_type: Some("atomic".into()), ..Default::default() }, m);
    }
}
