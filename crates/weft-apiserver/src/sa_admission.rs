//! The ServiceAccount admission kube-apiserver runs on a new pod: `spec.serviceAccountName`
//! defaults to `default` (and the deprecated `serviceAccount` mirrors it), the ServiceAccount
//! must exist, and unless the pod or its ServiceAccount says `automountServiceAccountToken:
//! false`, a projected `kube-api-access-<suffix>` volume (a bound token, the cluster CA, the
//! namespace) is mounted read-only at `/var/run/secrets/kubernetes.io/serviceaccount` in every
//! container and init container that has nothing mounted there.

use serde_json::{Value, json};
use weft_store::Key;

use crate::rest::Api;
use crate::status::ApiError;

pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The projected token's lifetime (upstream's `WarnOnlyBoundTokenExpirationSeconds`).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 60 * 60 + 7;
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The projected volume upstream adds.
pub fn api_access_volume(name: &str) -> Value {
    json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
        {"configMap": {"name": crate::service_accounts::ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}})
}

/// The name of the ServiceAccount a pod runs as (what the admission defaults it to).
pub fn service_account_name(pod: &Value) -> String {
    pod.pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| pod.pointer("/spec/serviceAccount").and_then(Value::as_str).filter(|s| !s.is_empty()))
        .unwrap_or("default")
        .to_string()
}

/// Admits a new `pod` (already defaulted and validated) whose ServiceAccount is `sa` (None: not
/// found). `suffix` names a volume it has to add.
pub fn admit_pod(pod: &mut Value, sa: Option<&Value>, suffix: &str) -> Result<(), ApiError> {
    if pod.pointer(&format!("/metadata/annotations/{}", MIRROR_ANNOTATION.replace('/', "~1"))).is_some() {
        return Ok(());
    }
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
    let sa_name = service_account_name(pod);
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
    spec.insert("serviceAccountName".into(), json!(sa_name));
    spec.insert("serviceAccount".into(), json!(sa_name));
    let Some(sa) = sa else {
        let mut e = ApiError::new(
            403,
            "Forbidden",
            format!(
                "pods {name:?} is forbidden: error looking up service account {ns}/{sa_name}: serviceaccount {sa_name:?} not found"
            ),
        );
        e.details = Some(json!({"name": name, "kind": "pods"}));
        return Err(e);
    };
    // The pod's own setting wins over its ServiceAccount's; both default to mounting.
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| sa.get("automountServiceAccountToken").and_then(Value::as_bool))
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(String::from);
    let volume = existing.clone().unwrap_or_else(|| format!("{VOLUME_PREFIX}{suffix}"));
    let mount = json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(c) = c.as_object_mut() else { continue };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else { continue };
            if mounts.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH)) {
                continue;
            }
            mounts.push(mount.clone());
            needed = true;
        }
    }
    if needed && existing.is_none() {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(v) = volumes.as_array_mut() {
            v.push(api_access_volume(&volume));
        }
    }
    Ok(())
}

/// [`admit_pod`] with the ServiceAccount read from the store.
pub fn admit(api: &Api, pod: &mut Value) -> Result<(), ApiError> {
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
    let sa = api.store.get(&Key::new("serviceaccounts", &ns, &service_account_name(pod)));
    admit_pod(pod, sa.as_deref(), &suffix())
}

/// Five characters of the alphabet Kubernetes' generated names use.
fn suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| CHARS[rand::random_range(0..CHARS.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
    }

    fn sa() -> Value {
        json!({"metadata": {"name": "default", "namespace": "ns"}})
    }

    #[test]
    fn a_pod_gets_the_default_account_and_the_projected_volume_in_every_container() {
        let mut p = pod(json!({"initContainers": [{"name": "i"}], "containers": [{"name": "a"}, {"name": "b"}]}));
        admit_pod(&mut p, Some(&sa()), "x2b4z").unwrap();
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["serviceAccount"], "default");
        assert_eq!(p["spec"]["volumes"], json!([api_access_volume("kube-api-access-x2b4z")]));
        for c in [&p["spec"]["initContainers"][0], &p["spec"]["containers"][0], &p["spec"]["containers"][1]] {
            assert_eq!(
                c["volumeMounts"],
                json!([{"name": "kube-api-access-x2b4z", "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}])
            );
        }
        let v = &p["spec"]["volumes"][0]["projected"]["sources"];
        assert_eq!(v[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(v[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(v[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"], "metadata.namespace");
    }

    #[test]
    fn a_missing_account_is_upstreams_403() {
        let mut p = pod(json!({"serviceAccountName": "robot", "containers": [{"name": "a"}]}));
        let e = admit_pod(&mut p, None, "x").unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: error looking up service account ns/robot: serviceaccount \"robot\" not found"
        );
    }

    #[test]
    fn automount_off_on_the_pod_or_the_account_mounts_nothing() {
        let mut p = pod(json!({"automountServiceAccountToken": false, "containers": [{"name": "a"}]}));
        admit_pod(&mut p, Some(&sa()), "x").unwrap();
        assert!(p["spec"].get("volumes").is_none());
        let off = json!({"metadata": {"name": "default"}, "automountServiceAccountToken": false});
        let mut p = pod(json!({"containers": [{"name": "a"}]}));
        admit_pod(&mut p, Some(&off), "x").unwrap();
        assert!(p["spec"].get("volumes").is_none());
        // The pod's own true wins over the account's false.
        let mut p = pod(json!({"automountServiceAccountToken": true, "containers": [{"name": "a"}]}));
        admit_pod(&mut p, Some(&off), "x").unwrap();
        assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn a_container_with_its_own_mount_there_keeps_it() {
        let own = json!({"name": "mine", "mountPath": TOKEN_MOUNT_PATH});
        let mut p = pod(json!({"containers": [{"name": "a", "volumeMounts": [own.clone()]}]}));
        admit_pod(&mut p, Some(&sa()), "x").unwrap();
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"], json!([own]));
        assert!(p["spec"].get("volumes").is_none(), "no container needs the volume");
    }

    #[test]
    fn an_existing_api_access_volume_is_reused() {
        let mut p =
            pod(json!({"volumes": [api_access_volume("kube-api-access-abcde")], "containers": [{"name": "a"}]}));
        admit_pod(&mut p, Some(&sa()), "zzzzz").unwrap();
        assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(1));
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0]["name"], "kube-api-access-abcde");
    }
}
