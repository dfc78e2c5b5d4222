//! A container's `env`, validated as kube-apiserver's `validateEnv` does: names, one source per
//! `valueFrom`, and the downward-API field paths an env var may take (a typo such as
//! `metadata.namespaces` is refused with upstream's words, not silently left empty).

use k8s_openapi::api::core::v1::{EnvVar, ObjectFieldSelector};

use crate::errors::FieldError;
use crate::validate::Errors;

/// The field paths kube-apiserver converts for `fieldRef` (`ConvertDownwardAPIFieldLabel`, v1).
const CONVERTIBLE: &[&str] = &[
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.serviceAccountName",
    "spec.schedulerName",
    "status.phase",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// Of those, what an env var may read (`validEnvDownwardAPIFieldPathExpressions`).
const FOR_ENV: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// Upstream's `IsEnvVarName`: letters, digits, `_`, `-` and `.`, not starting with a digit.
fn is_env_var_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub fn container_env(env: &[EnvVar], f: &str, errs: &mut Errors) {
    for (i, e) in env.iter().enumerate() {
        let ef = format!("{f}.env[{i}]");
        if e.name.is_empty() {
            errs.push(FieldError::required(format!("{ef}.name"), "give the variable a name"));
        } else if !is_env_var_name(&e.name) {
            errs.push(FieldError::invalid_str(
                format!("{ef}.name"),
                &e.name,
                "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')",
            ));
        }
        let Some(from) = &e.value_from else { continue };
        let vf = format!("{ef}.valueFrom");
        let sources = [
            from.field_ref.is_some(),
            from.resource_field_ref.is_some(),
            from.config_map_key_ref.is_some(),
            from.secret_key_ref.is_some(),
        ]
        .into_iter()
        .filter(|s| *s)
        .count();
        if sources == 0 {
            errs.push(FieldError::invalid_str(
                &vf,
                "",
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            ));
        } else if sources > 1 {
            errs.push(FieldError::invalid_str(&vf, "", "may not have more than one field specified at a time"));
        }
        if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
            errs.push(FieldError::invalid_str(&vf, "", "may not be specified when `value` is not empty"));
        }
        if let Some(fr) = &from.field_ref {
            field_ref(fr, &format!("{vf}.fieldRef"), errs);
        }
    }
}

/// `validateObjectFieldSelector` with the env var's expressions.
fn field_ref(fr: &ObjectFieldSelector, f: &str, errs: &mut Errors) {
    let path = fr.field_path.as_str();
    let fp = format!("{f}.fieldPath");
    if path.is_empty() {
        errs.push(FieldError::required(fp, "name the pod field to read, e.g. 'metadata.namespace'"));
        return;
    }
    if fr.api_version.as_deref().is_some_and(|v| !v.is_empty() && v != "v1") {
        let v = fr.api_version.as_deref().unwrap_or("");
        errs.push(FieldError::invalid_str(
            format!("{f}.apiVersion"),
            v,
            format!("error converting fieldPath: unsupported pod version: {v}"),
        ));
        return;
    }
    // `metadata.labels['key']` and `metadata.annotations['key']` name one entry.
    let (base, subscript) = match path.find('[') {
        Some(i) => (&path[..i], Some(&path[i..])),
        None => (path, None),
    };
    let subscripted = subscript.is_some_and(|s| s.len() > 4 && s.starts_with("['") && s.ends_with("']"));
    let converts = CONVERTIBLE.contains(&base)
        && (subscript.is_none() || (subscripted && matches!(base, "metadata.labels" | "metadata.annotations")));
    if !converts {
        errs.push(FieldError::invalid_str(
            fp,
            path,
            format!("error converting fieldPath: field label not supported: {path}"),
        ));
        return;
    }
    if subscript.is_some() {
        return;
    }
    if !FOR_ENV.contains(&path) {
        errs.push(FieldError::not_supported(fp, path, FOR_ENV));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(env: serde_json::Value) -> Vec<String> {
        let env: Vec<EnvVar> = serde_json::from_value(env).unwrap();
        let mut errs = vec![];
        container_env(&env, "spec.containers[0]", &mut errs);
        errs.iter().map(|e| format!("{}: {}", e.field, e.body())).collect()
    }

    #[test]
    fn field_paths_as_kube_apiserver_takes_them() {
        let ok = json!([
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels['app']"}}},
            {"name": "my.env-name", "value": "x"},
        ]);
        assert_eq!(check(ok), Vec::<String>::new());
        // The seeds' ingress controller has this typo: upstream refuses it at conversion.
        let e =
            check(json!([{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespaces"}}}]));
        assert_eq!(
            e,
            vec![
                "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: Invalid value: \"metadata.namespaces\": error converting fieldPath: field label not supported: metadata.namespaces"
            ]
        );
        // Convertible, but not something an env var may read.
        let e = check(json!([{"name": "P", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]));
        assert!(e[0].contains("Unsupported value: \"status.phase\": supported values: \"metadata.name\""), "{e:?}");
        let e = check(json!([{"name": "1X", "value": "v", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]));
        assert_eq!(e.len(), 2, "{e:?}");
        let e = check(json!([{"name": "X", "valueFrom": {}}]));
        assert!(e[0].contains("must specify one of"), "{e:?}");
    }
}
