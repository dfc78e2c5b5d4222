//! A file provider: the objects of a multi-document YAML file (Ingress, IngressClass, Service,
//! EndpointSlice, Secret), read again whenever it changes. For benchmarks and for running the
//! proxy without an API server.
//!
//! The file is polled (its mtime, ctime, size and inode every [`POLL`]), so a file replaced by a
//! rename (the safe way to write it: the reader never sees half a file) and one rewritten in
//! place are both seen. A file written twice within one tick of the filesystem's clock keeps its
//! times; while the file is younger than [`RECHECK`] its content is compared too.
//!
//! Every document is parsed on its own, so an error names the document (0-based, in file
//! order) and the field; a file with any error changes nothing: the last good objects stay.
//! Objects without `metadata.namespace` are in `default`, as `kubectl apply -f` puts them.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Inputs;

/// How often the file's metadata is looked at.
pub const POLL: Duration = Duration::from_millis(25);

/// While the file was modified less than this long ago, its content is compared on every poll
/// (two writes within one tick of the filesystem's clock leave the same times and maybe size).
pub const RECHECK: Duration = Duration::from_secs(1);

/// Reads `path` and calls `on_change` with its objects, then again after every change to it.
/// Returns only on an error; a file that does not parse is reported and the last good objects
/// stay.
///
/// The first read must succeed (a missing or unreadable file, or one that does not parse, is the
/// error returned); after that, a file that goes missing or does not parse is logged and
/// waited for.
pub async fn run(path: PathBuf, mut on_change: impl FnMut(Inputs) + Send) -> anyhow::Result<()> {
    let mut seen = Stamp::of(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let inputs = parse(&String::from_utf8_lossy(&text)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tracing::info!(file = %path.display(), objects = count(&inputs), "routes from file");
    on_change(inputs);
    let mut missing = false;
    loop {
        tokio::time::sleep(POLL).await;
        let stamp = match Stamp::of(&path) {
            Ok(s) => s,
            Err(e) => {
                if !missing {
                    tracing::warn!(file = %path.display(), "cannot read the file, keeping the last routes: {e}");
                    missing = true;
                }
                continue;
            }
        };
        missing = false;
        if stamp == seen && !stamp.recent() {
            continue;
        }
        let now = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot read the file, keeping the last routes: {e}");
                continue;
            }
        };
        // The stamp is taken before the read: a write after it changes the stamp again.
        seen = stamp;
        if now == text {
            continue;
        }
        text = now;
        match parse(&String::from_utf8_lossy(&text)) {
            Ok(inputs) => {
                tracing::info!(file = %path.display(), objects = count(&inputs), "routes from file changed");
                on_change(inputs);
            }
            Err(e) => tracing::error!(file = %path.display(), "not applied, keeping the last routes: {e}"),
        }
    }
}

fn count(i: &Inputs) -> usize {
    i.ingresses.len() + i.classes.len() + i.services.len() + i.slices.len() + i.secrets.len()
}

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let m = std::fs::metadata(path)?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// Whether the file was changed less than [`RECHECK`] ago (or its time is in the future).
    fn recent(&self) -> bool {
        let (secs, nanos) = self.mtime.max(self.ctime);
        let changed = SystemTime::UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
        match SystemTime::now().duration_since(changed) {
            Ok(age) => age < RECHECK,
            Err(_) => true,
        }
    }
}

/// The objects of a multi-document YAML (or JSON) text. An error names the document (0-based)
/// and what is wrong; documents of other kinds are logged and skipped, as are Secrets of types
/// other than `kubernetes.io/tls`. `kind: List` documents are expanded (their items are numbered
/// `N.i`).
pub fn parse(text: &str) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    let mut errors = vec![];
    for (i, doc) in documents(text).into_iter().enumerate() {
        let value: Value = match serde_saphyr::from_str(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("document {i}: invalid YAML: {e}"));
                continue;
            }
        };
        let items: Vec<(String, Value)> = match value {
            Value::Null => continue,
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) => {
                match o.get("items") {
                    Some(Value::Array(items)) => {
                        items.iter().enumerate().map(|(j, v)| (format!("{i}.{j}"), v.clone())).collect()
                    }
                    Some(Value::Null) | None => vec![],
                    Some(_) => {
                        errors.push(format!("document {i}: items is not a list"));
                        continue;
                    }
                }
            }
            other => vec![(i.to_string(), other)],
        };
        for (at, v) in items {
            if let Err(e) = add(&mut inputs, v) {
                errors.push(format!("document {at}: {e}"));
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(inputs)
}

/// Splits a YAML stream at its document markers (`---` at the start of a line, alone or followed
/// by a space; `...` ends a document). The markers cannot appear at column 0 inside a document.
fn documents(text: &str) -> Vec<&str> {
    let mut docs = vec![];
    let mut start = 0;
    let mut in_doc = false;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim_end_matches(['\n', '\r']);
        let marker = |m: &str| l == m || l.strip_prefix(m).is_some_and(|r| r.starts_with([' ', '\t']));
        if marker("---") {
            if in_doc || !text[start..pos].trim().is_empty() {
                docs.push(&text[start..pos]);
            }
            // What follows `--- ` on the same line belongs to the new document.
            start = pos + 3;
            in_doc = true;
        } else if marker("...") {
            docs.push(&text[start..pos]);
            start = pos + line.len();
            in_doc = false;
        }
        pos += line.len();
    }
    if in_doc || !text[start..].trim().is_empty() {
        docs.push(&text[start..]);
    }
    // A document of nothing but comments and blanks is none.
    docs.retain(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    docs
}

fn add(inputs: &mut Inputs, v: Value) -> Result<()> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    match (api.as_str(), kind.as_str()) {
        ("networking.k8s.io/v1", "Ingress") => {
            let mut o: Ingress = decode(v, &kind)?;
            namespaced(&mut o.metadata, &kind)?;
            inputs.ingresses.push(Arc::new(o));
        }
        ("networking.k8s.io/v1", "IngressClass") => {
            let o: IngressClass = decode(v, &kind)?;
            named(&o.metadata, &kind)?;
            inputs.classes.push(Arc::new(o));
        }
        ("v1", "Service") => {
            let mut o: Service = decode(v, &kind)?;
            namespaced(&mut o.metadata, &kind)?;
            inputs.services.push(Arc::new(o));
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let mut o: EndpointSlice = decode(v, &kind)?;
            namespaced(&mut o.metadata, &kind)?;
            inputs.slices.push(Arc::new(o));
        }
        ("v1", "Secret") => {
            let mut o: Secret = decode(v, &kind)?;
            namespaced(&mut o.metadata, &kind)?;
            // stringData is write-only: the API server merges it into data (its keys winning).
            if let Some(sd) = o.string_data.take() {
                let data = o.data.get_or_insert_with(BTreeMap::new);
                for (k, s) in sd {
                    data.insert(k, ByteString(s.into_bytes()));
                }
            }
            if o.type_.as_deref() != Some("kubernetes.io/tls") {
                tracing::info!(secret = ?o.metadata.name, "skipping a Secret whose type is not kubernetes.io/tls");
                return Ok(());
            }
            inputs.secrets.push(Arc::new(o));
        }
        _ => {
            tracing::warn!(kind = %kind, api_version = %api, "skipping an object of a kind the ingress controller does not read");
        }
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(v: Value, kind: &str) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." { String::new() } else { format!(" at {at}") };
        anyhow::anyhow!("{kind}{at}: {}", e.inner())
    })
}

fn named(meta: &ObjectMeta, kind: &str) -> Result<()> {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(()),
        _ => bail!("{kind} without metadata.name"),
    }
}

fn namespaced(meta: &mut ObjectMeta, kind: &str) -> Result<()> {
    named(meta, kind)?;
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const OBJECTS: &str = r#"
# routes for a.example
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: weft
spec:
  controller: weft.dev/ingress
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: a
  annotations:
    nginx.ingress.kubernetes.io/ssl-redirect: "false"
spec:
  ingressClassName: weft
  tls:
  - hosts: [a.example]
    secretName: tls
  rules:
  - host: a.example
    http:
      paths:
      - path: /api/
        pathType: Prefix
        backend:
          service:
            name: api
            port:
              number: 80
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: web
spec:
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: web
  labels:
    kubernetes.io/service-name: api
addressType: IPv4
endpoints:
- addresses: ["127.0.0.1"]
  conditions:
    ready: true
ports:
- name: http
  port: 8080
---
apiVersion: v1
kind: Secret
metadata:
  name: tls
type: kubernetes.io/tls
data:
  tls.crt: Y2VydA==
stringData:
  tls.key: key
---
apiVersion: v1
kind: Secret
metadata:
  name: other
type: Opaque
data:
  x: eA==
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: ignored
"#;

    #[test]
    fn reads_every_kind() {
        let i = parse(OBJECTS).unwrap();
        assert_eq!(
            (i.ingresses.len(), i.classes.len(), i.services.len(), i.slices.len(), i.secrets.len()),
            (1, 1, 1, 1, 1)
        );
        let ing = &i.ingresses[0];
        assert_eq!(ing.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(ing.metadata.annotations.as_ref().unwrap()["nginx.ingress.kubernetes.io/ssl-redirect"], "false");
        let rule = &ing.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("a.example"));
        assert_eq!(i.services[0].metadata.namespace.as_deref(), Some("web"));
        assert_eq!(i.slices[0].endpoints.as_ref().unwrap()[0].addresses, ["127.0.0.1"]);
        assert_eq!(i.slices[0].ports.as_ref().unwrap()[0].port, Some(8080));
        assert_eq!(i.classes[0].metadata.namespace, None);
        // data is base64; stringData is merged into data.
        let data = i.secrets[0].data.as_ref().unwrap();
        assert_eq!(data["tls.crt"].0, b"cert");
        assert_eq!(data["tls.key"].0, b"key");
        assert!(i.secrets[0].string_data.is_none());
    }

    #[test]
    fn errors_name_the_document() {
        let text = "kind: Service\napiVersion: v1\nmetadata: {name: a}\n---\nkind: Service\napiVersion: v1\nmetadata: {name: b}\nspec:\n  ports: 80\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains("document 1") && e.contains("spec.ports"), "{e}");
        let e = parse("---\nkind: Ingress\napiVersion: networking.k8s.io/v1\nmetadata: {name: a}\n---\na: [\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("document 1: invalid YAML"), "{e}");
        let e = parse("kind: Ingress\napiVersion: networking.k8s.io/v1\nspec: {}\n").unwrap_err().to_string();
        assert!(e.contains("document 0") && e.contains("metadata.name"), "{e}");
        // Bad base64 in a Secret.
        let e = parse(
            "kind: Secret\napiVersion: v1\nmetadata: {name: s}\ntype: kubernetes.io/tls\ndata: {tls.crt: '%%%'}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("document 0") && e.contains("data"), "{e}");
    }

    #[test]
    fn document_markers() {
        assert_eq!(documents("a: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(documents("---\na: 1\n---\n---\n# only a comment\n---\nb: 2\n...\n").len(), 2);
        assert_eq!(documents("--- {a: 1}\n--- {b: 2}\n"), vec![" {a: 1}\n", " {b: 2}\n"]);
        // Not markers: indented, or part of a longer token.
        assert_eq!(documents("a: |\n  ---\n  x\nb: ---x\n").len(), 1);
        assert!(documents("").is_empty() && documents("\n# nothing\n").is_empty());
        let i = parse("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}}\n- {apiVersion: v1, kind: Service, metadata: {name: b}}\n").unwrap();
        assert_eq!(i.services.len(), 2);
        let e = parse("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}}\n- {apiVersion: v1, kind: Service}\n").unwrap_err();
        assert!(e.to_string().contains("document 0.1"), "{e}");
    }

    fn names(i: &Inputs) -> Vec<String> {
        i.services.iter().map(|s| s.metadata.name.clone().unwrap()).collect()
    }

    fn service(name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n")
    }

    type Seen = Arc<Mutex<Vec<Vec<String>>>>;

    /// Waits (at most 2 s) until the calls so far satisfy `done`, and returns them.
    async fn until(seen: &Seen, done: impl Fn(&[Vec<String>]) -> bool) -> Vec<Vec<String>> {
        for _ in 0..200 {
            if done(&seen.lock().unwrap()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen.lock().unwrap().clone()
    }

    fn last_is(name: &'static str) -> impl Fn(&[Vec<String>]) -> bool {
        move |c| c.last().is_some_and(|l| l == &[name])
    }

    #[tokio::test]
    async fn follows_changes_and_keeps_the_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, service("a")).unwrap();
        let seen: Seen = Arc::new(Mutex::new(vec![]));
        let s = seen.clone();
        let task = tokio::spawn(run(path.clone(), move |i| s.lock().unwrap().push(names(&i))));
        assert_eq!(until(&seen, |c| !c.is_empty()).await, [["a"]]);

        // Replaced by a rename (a new inode).
        let tmp = dir.path().join("routes.yaml.tmp");
        std::fs::write(&tmp, format!("{}---\n{}", service("a"), service("b"))).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(until(&seen, |c| c.len() == 2).await[1], ["a", "b"]);

        // Broken: nothing is called, the last good objects stay.
        std::fs::write(&path, format!("{}---\nkind: Service\napiVersion: v1\nspec: [\n", service("c"))).unwrap();
        tokio::time::sleep(POLL * 6).await;
        assert_eq!(seen.lock().unwrap().len(), 2);

        // Rewritten in place twice at once, the same size (the same times, likely): the last wins.
        // (Not `y`: YAML reads a bare y as true.)
        std::fs::write(&path, service("x1")).unwrap();
        std::fs::write(&path, service("y1")).unwrap();
        assert_eq!(until(&seen, last_is("y1")).await.last().unwrap(), &["y1"]);

        // Gone for a while, then back: no call while it is missing.
        tokio::time::sleep(POLL * 2).await;
        let n = seen.lock().unwrap().len();
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(POLL * 4).await;
        assert_eq!(seen.lock().unwrap().len(), n);
        std::fs::write(&path, service("z1")).unwrap();
        assert_eq!(until(&seen, last_is("z1")).await.len(), n + 1);
        assert!(!task.is_finished());
        task.abort();
    }

    #[tokio::test]
    async fn a_first_read_that_fails_is_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = run(dir.path().join("none.yaml"), |_| {}).await.unwrap_err();
        assert!(e.to_string().contains("none.yaml"), "{e}");
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "kind: Service\napiVersion: v1\n").unwrap();
        let e = run(path, |_| {}).await.unwrap_err();
        assert!(format!("{e:#}").contains("document 0"), "{e:#}");
    }
}
