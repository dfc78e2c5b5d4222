//! Projected volumes, as the kubelet materializes them: a ServiceAccount token from a
//! TokenRequest bound to the pod (asked of the API with the kubelet's client), ConfigMap and
//! Secret keys, and downward-API fields of the pod's metadata, written with the kubelet's atomic
//! writer layout (the files in a timestamped `..<time>` directory, `..data` a symlink to it
//! swapped in one rename, each visible name a symlink through `..data`) under
//! `pods/<uid>/volumes/<name>`, and bind-mounted read-only at the containers' mount paths inside
//! the pod's mount namespace only ([`mount_in_pod`], run by the shim). The token is written again
//! when 80% of its life has passed, or 24 h ([`refresh_due`]); everything goes with the pod's
//! directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ProjectedVolumeSource, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};

/// A directory bind-mounted into the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Where a pod's volume `name` is materialized.
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

/// The pod's projected volumes, by name.
fn projected(pod: &Pod) -> BTreeMap<String, ProjectedVolumeSource> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| Some((v.name.clone(), v.projected.clone()?)))
        .collect()
}

/// The mounts of the pod's projected volumes. The pod's containers share one mount namespace
/// here, so a volume any container mounts is seen at that path by all of them.
pub fn mounts(pod_dir: &Path, pod: &Pod) -> Vec<Mount> {
    let vols = projected(pod);
    let mut out: Vec<Mount> = vec![];
    let spec = pod.spec.clone().unwrap_or_default();
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        for m in c.volume_mounts.iter().flatten() {
            if vols.contains_key(&m.name) && !out.iter().any(|o| o.target == Path::new(&m.mount_path)) {
                out.push(Mount {
                    source: volume_dir(pod_dir, &m.name),
                    target: PathBuf::from(&m.mount_path),
                    // Projected volumes are always read-only (the kubelet mounts them so).
                    read_only: true,
                });
            }
        }
    }
    out
}

/// A downward-API field of the pod (the fields a volume may name).
fn field(pod: &Pod, path: &str) -> Option<String> {
    let md = &pod.metadata;
    let map = |m: &Option<BTreeMap<String, String>>| {
        m.iter().flatten().map(|(k, v)| format!("{k}={v:?}\n")).collect::<String>()
    };
    match path {
        "metadata.name" => md.name.clone(),
        "metadata.namespace" => md.namespace.clone(),
        "metadata.uid" => md.uid.clone(),
        "metadata.labels" => Some(map(&md.labels)),
        "metadata.annotations" => Some(map(&md.annotations)),
        _ => {
            let key = path.strip_prefix("metadata.labels['")?.strip_suffix("']")?;
            md.labels.as_ref()?.get(key).cloned()
        }
    }
}

/// Keys of a ConfigMap or Secret as files: the items asked for, else every key.
fn items(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    what: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    match items {
        None => Ok(data.into_iter().collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                let v = data.get(&i.key).with_context(|| format!("{what} has no key {:?}", i.key))?;
                Ok((i.path.clone(), v.clone()))
            })
            .collect(),
    }
}

/// The files of projected volume `v` of `pod`, asking the API for what they hold.
pub async fn project(client: &kube::Client, pod: &Pod, v: &ProjectedVolumeSource) -> Result<Vec<(String, Vec<u8>)>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut files = vec![];
    for s in v.sources.iter().flatten() {
        if let Some(t) = &s.service_account_token {
            let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
            let req = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: t.audience.clone().filter(|a| !a.is_empty()).map(|a| vec![a]),
                    expiration_seconds: Some(t.expiration_seconds.unwrap_or(3600)),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: pod.metadata.name.clone(),
                        uid: pod.metadata.uid.clone(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
            let got = api
                .create_token_request(&sa, &PostParams::default(), &req)
                .await
                .with_context(|| format!("requesting a token for service account {ns}/{sa}"))?;
            let token = got.status.and_then(|s| s.token).unwrap_or_default();
            files.push((t.path.clone(), token.into_bytes()));
        }
        if let Some(c) = &s.config_map {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            match api.get_opt(&c.name).await? {
                Some(cm) => {
                    let mut data: BTreeMap<String, Vec<u8>> =
                        cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                    data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
                    files.extend(items(data, c.items.as_ref(), &format!("configmap {ns}/{}", c.name))?);
                }
                None if c.optional == Some(true) => {}
                None => bail!("configmap \"{}\" not found", c.name),
            }
        }
        if let Some(sc) = &s.secret {
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            match api.get_opt(&sc.name).await? {
                Some(sec) => {
                    let data = sec.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                    files.extend(items(data, sc.items.as_ref(), &format!("secret {ns}/{}", sc.name))?);
                }
                None if sc.optional == Some(true) => {}
                None => bail!("secret \"{}\" not found", sc.name),
            }
        }
        if let Some(d) = &s.downward_api {
            for i in d.items.iter().flatten() {
                if let Some(f) = &i.field_ref {
                    let value = field(pod, &f.field_path)
                        .with_context(|| format!("downwardAPI field {:?} is not supported", f.field_path))?;
                    files.push((i.path.clone(), value.into_bytes()));
                }
            }
        }
    }
    Ok(files)
}

/// A relative path that stays inside its volume (no `..`, not absolute, not empty).
fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && !path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(n) if !n.to_string_lossy().starts_with("..")))
}

/// Writes `files` into `dir` as the kubelet's atomic writer does: a fresh `..<stamp>` directory,
/// `..data` pointing at it (swapped by one rename, so a reader sees the old set or the new one),
/// each top-level name a symlink through `..data`; the previous set removed.
pub fn write_atomic(dir: &Path, files: &[(String, Vec<u8>)], mode: u32, stamp: &str) -> Result<()> {
    for (p, _) in files {
        if !safe_relative(p) {
            bail!("volume path {p:?} must be relative and may not contain '..'");
        }
    }
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let ts_name = format!("..{stamp}");
    let ts = dir.join(&ts_name);
    let _ = fs::remove_dir_all(&ts);
    fs::create_dir(&ts)?;
    fs::set_permissions(&ts, fs::Permissions::from_mode(0o755))?;
    for (p, data) in files {
        let f = ts.join(p);
        if let Some(parent) = f.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&f, data)?;
        fs::set_permissions(&f, fs::Permissions::from_mode(mode))?;
    }
    let old = fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    symlink(&ts_name, &tmp)?;
    fs::rename(&tmp, dir.join("..data"))?;
    let mut top: Vec<String> =
        files.iter().filter_map(|(p, _)| p.split('/').next().map(String::from)).collect::<Vec<_>>();
    top.sort();
    top.dedup();
    for t in &top {
        let link = dir.join(t);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(t), &link)?;
        }
    }
    // Names of the previous set that the new one lacks, then the previous set itself.
    for e in fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if !n.starts_with("..") && !top.contains(&n) {
            let _ = fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| o != Path::new(&ts_name)) {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// The `..<stamp>` name the atomic writer gives a set of files (UTC, as the kubelet's).
fn stamp() -> String {
    let now = jiff::Timestamp::now();
    format!("{}.{:09}", now.strftime("%Y_%m_%d_%H_%M_%S"), now.subsec_nanosecond())
}

/// Whether a token (its JWT text) should be replaced at `now`: 80% of its life gone, or 24 h,
/// as the kubelet's token manager decides; a token that cannot be read is due.
pub fn refresh_due(token: &str, now: i64) -> bool {
    #[derive(Deserialize)]
    struct Times {
        iat: i64,
        exp: i64,
    }
    let times = token.split('.').nth(1).and_then(|p| {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok()?;
        serde_json::from_slice::<Times>(&raw).ok()
    });
    match times {
        None => true,
        Some(t) => {
            let life = t.exp.saturating_sub(t.iat).max(0);
            now >= t.iat.saturating_add(life / 10 * 8 + (life % 10) * 8 / 10) || now >= t.iat.saturating_add(24 * 3600)
        }
    }
}

/// Materializes every projected volume of `pod` that is not there yet (before its sandbox
/// starts), and those whose token is due (while it runs).
pub async fn sync(client: &kube::Client, pod_dir: &Path, pod: &Pod) -> Result<()> {
    for (name, v) in projected(pod) {
        let dir = volume_dir(pod_dir, &name);
        let token_paths: Vec<&str> = v
            .sources
            .iter()
            .flatten()
            .filter_map(|s| s.service_account_token.as_ref())
            .map(|t| t.path.as_str())
            .collect();
        let fresh = fs::symlink_metadata(dir.join("..data")).is_ok()
            && token_paths.iter().all(|p| {
                fs::read_to_string(dir.join(p)).is_ok_and(|t| !refresh_due(&t, jiff::Timestamp::now().as_second()))
            });
        if fresh {
            continue;
        }
        let files = project(client, pod, &v).await.with_context(|| format!("volume {name:?}"))?;
        let mode = v.default_mode.unwrap_or(0o644) as u32 & 0o777;
        write_atomic(&dir, &files, mode, &stamp()).with_context(|| format!("writing volume {name:?}"))?;
    }
    Ok(())
}

/// Inside the pod's own mount namespace (the shim, right after entering the pod): each mount's
/// source bind-mounted at its target, read-only. A target the host does not have is made in a
/// tmpfs that shadows its nearest existing ancestor, with that ancestor's entries bound back in,
/// so nothing is created on the host's file system and the host never sees the mount.
pub fn mount_in_pod(mounts: &[Mount], scratch: &Path) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    for m in mounts {
        if !m.target.is_absolute() {
            bail!("mountPath {} must be absolute", m.target.display());
        }
        if !m.target.is_dir() {
            make_target(&m.target, scratch).with_context(|| format!("making {} in the pod", m.target.display()))?;
        }
        mount(Some(m.source.as_path()), m.target.as_path(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("mounting {} at {}", m.source.display(), m.target.display()))?;
        if m.read_only {
            let flags =
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            mount(None::<&str>, m.target.as_path(), None::<&str>, flags, None::<&str>)
                .with_context(|| format!("making {} read-only", m.target.display()))?;
        }
    }
    Ok(())
}

/// Makes `target` exist in this mount namespace only (see [`mount_in_pod`]).
fn make_target(target: &Path, scratch: &Path) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    // The nearest existing ancestor, symlinks resolved (/var/run is /run), and what is missing.
    let mut base = target.to_path_buf();
    let mut missing: Vec<std::ffi::OsString> = vec![];
    while !base.exists() {
        missing.push(base.file_name().context("no existing ancestor")?.to_os_string());
        base = base.parent().context("no existing ancestor")?.to_path_buf();
    }
    missing.reverse();
    let base = base.canonicalize()?;
    if !base.is_dir() {
        bail!("{} is not a directory", base.display());
    }
    fs::create_dir_all(scratch)?;
    let mode = fs::metadata(&base)?.permissions().mode() & 0o7777;
    mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("mode={mode:o}").as_str()),
    )
    .context("a tmpfs to shadow with")?;
    for e in fs::read_dir(&base)?.flatten() {
        let (from, to) = (e.path(), scratch.join(e.file_name()));
        let t = e.file_type()?;
        if t.is_symlink() {
            symlink(fs::read_link(&from)?, &to)?;
            continue;
        }
        if t.is_dir() {
            fs::create_dir(&to)?;
        } else {
            fs::File::create(&to)?;
        }
        mount(Some(from.as_path()), to.as_path(), None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .with_context(|| format!("binding {} back", from.display()))?;
    }
    let mut made = scratch.to_path_buf();
    for part in &missing {
        made.push(part);
        fs::create_dir(&made)?;
        fs::set_permissions(&made, fs::Permissions::from_mode(0o755))?;
    }
    mount(Some(scratch), base.as_path(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .with_context(|| format!("shadowing {}", base.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_atomic_writer_swaps_whole_sets() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let files = vec![("token".to_string(), b"t1".to_vec()), ("ca.crt".to_string(), b"ca".to_vec())];
        write_atomic(&dir, &files, 0o644, "2026_01_01_00_00_00.000000001").unwrap();
        assert_eq!(fs::read_link(dir.join("..data")).unwrap(), Path::new("..2026_01_01_00_00_00.000000001"));
        assert_eq!(fs::read_link(dir.join("token")).unwrap(), Path::new("..data/token"));
        assert_eq!(fs::read(dir.join("token")).unwrap(), b"t1");
        let mode = fs::metadata(dir.join("..data/token")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let files = vec![("token".to_string(), b"t2".to_vec())];
        write_atomic(&dir, &files, 0o644, "2026_01_01_00_00_01.000000001").unwrap();
        assert_eq!(fs::read(dir.join("token")).unwrap(), b"t2");
        assert!(!dir.join("ca.crt").exists(), "a name the new set lacks goes");
        assert!(!dir.join("..2026_01_01_00_00_00.000000001").exists(), "the old set goes");
        assert!(!dir.join("..data_tmp").exists());
    }

    #[test]
    fn paths_may_not_leave_the_volume() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "..data"] {
            assert!(write_atomic(d.path(), &[(bad.to_string(), vec![])], 0o644, "s").is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_refreshed_at_80_percent_or_24_hours() {
        use base64::Engine;
        let jwt = |iat: i64, exp: i64| {
            let body = serde_json::to_vec(&serde_json::json!({"iat": iat, "exp": exp})).unwrap();
            format!("h.{}.s", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body))
        };
        let t = jwt(1000, 1000 + 3607);
        assert!(!refresh_due(&t, 1000 + 2884));
        assert!(refresh_due(&t, 1000 + 2885));
        let long = jwt(0, 10 * 86400);
        assert!(!refresh_due(&long, 86399));
        assert!(refresh_due(&long, 86400));
        assert!(refresh_due("garbage", 0));
    }

    #[test]
    fn mounts_follow_the_containers() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"volumes": [{"name": "kube-api-access-x", "projected": {"sources": []}}, {"name": "e", "emptyDir": {}}],
                     "containers": [
                        {"name": "a", "volumeMounts": [{"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}, {"name": "e", "mountPath": "/e"}]},
                        {"name": "b", "volumeMounts": [{"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}]}
        }))
        .unwrap();
        let m = mounts(Path::new("/s/pods/u"), &pod);
        assert_eq!(
            m,
            vec![Mount {
                source: PathBuf::from("/s/pods/u/volumes/kube-api-access-x"),
                target: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount"),
                read_only: true
            }]
        );
    }

    #[test]
    fn downward_fields_of_the_metadata() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}}}))
        .unwrap();
        assert_eq!(field(&pod, "metadata.namespace").as_deref(), Some("ns"));
        assert_eq!(field(&pod, "metadata.labels").as_deref(), Some("app=\"x\"\n"));
        assert_eq!(field(&pod, "metadata.labels['app']").as_deref(), Some("x"));
        assert_eq!(field(&pod, "spec.nodeName"), None);
    }
}
