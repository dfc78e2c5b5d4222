//! Server-side apply and managedFields with the real kubectl: `apply --server-side` (unchanged
//! the second time, fields dropped from the manifest removed, conflicts and
//! `--force-conflicts`), the move from client-side apply, `kubectl diff`, and the Update
//! entries other kubectl commands leave.

use serde_json::Value;
use weft_testkit::Lab;

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: ssa
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: c
        image: registry.invalid/web:1
        command: [sleep, infinity]
        ports:
        - containerPort: 80
";

struct Manifests {
    dir: tempfile::TempDir,
}

impl Manifests {
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().to_string()
    }
}

fn get(lab: &Lab, what: &[&str]) -> Value {
    let mut a = vec!["get", "-n", "ssa"];
    a.extend_from_slice(what);
    a.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
    serde_json::from_str(&lab.kubectl_ok(&a)).unwrap()
}

/// The managedFields entry of `manager`, if any.
fn entry(obj: &Value, manager: &str) -> Option<Value> {
    obj["metadata"]["managedFields"].as_array()?.iter().find(|e| e["manager"] == manager).cloned()
}

fn fails(lab: &Lab, args: &[&str]) -> String {
    let out = lab.kubectl(args);
    assert!(!out.status.success(), "kubectl {args:?} should have failed:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn server_side_apply_with_kubectl() {
    let lab = Lab::up(&["--nodes", "0"]);
    let m = Manifests { dir: tempfile::tempdir().unwrap() };
    lab.kubectl_ok(&["create", "namespace", "ssa"]);
    let f = m.write("d.yaml", DEPLOYMENT);

    // Created, then unchanged.
    let out = lab.kubectl_ok(&["apply", "--server-side", "-f", &f]);
    assert!(out.contains("deployment.apps/web serverside-applied"), "{out}");
    let d = get(&lab, &["deploy", "web"]);
    let e = entry(&d, "kubectl").unwrap_or_else(|| panic!("no kubectl entry: {d}"));
    assert_eq!(e["operation"], "Apply", "{e}");
    assert_eq!(e["fieldsType"], "FieldsV1", "{e}");
    assert_eq!(e["fieldsV1"]["f:spec"]["f:replicas"], serde_json::json!({}), "{e}");
    let c = &e["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
    assert_eq!(c["."], serde_json::json!({}), "{e}");
    assert!(c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object(), "{e}");
    // The second apply changes nothing it owns (the controllers write status meanwhile, so the
    // resourceVersion is no witness): same generation, same entry, same time.
    lab.kubectl_ok(&["apply", "--server-side", "-f", &f]);
    let again = get(&lab, &["deploy", "web"]);
    assert_eq!(again["metadata"]["generation"], d["metadata"]["generation"], "{again}");
    assert_eq!(entry(&again, "kubectl"), Some(e.clone()), "{again}");
    assert_eq!(again["spec"], d["spec"]);
    // kubectl reads our managedFields back (its default output hides them).
    let plain: Value =
        serde_json::from_str(&lab.kubectl_ok(&["get", "deploy", "web", "-n", "ssa", "-o", "json"])).unwrap();
    assert!(plain["metadata"].get("managedFields").is_none(), "{plain}");

    // A field left out of the manifest goes.
    let without = DEPLOYMENT.replace("        ports:\n        - containerPort: 80\n", "");
    let f2 = m.write("d2.yaml", &without);
    lab.kubectl_ok(&["apply", "--server-side", "-f", &f2]);
    let d = get(&lab, &["deploy", "web"]);
    assert!(d["spec"]["template"]["spec"]["containers"][0].get("ports").is_none(), "{d}");

    // Another manager changing spec.replicas conflicts; kubectl explains; forced, it owns it.
    let three = without.replace("replicas: 2", "replicas: 3");
    let f3 = m.write("d3.yaml", &three);
    let err = fails(&lab, &["apply", "--server-side", "--field-manager=other", "-f", &f3]);
    assert!(err.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"), "{err}");
    assert!(err.contains("--force-conflicts"), "kubectl's explanation: {err}");
    lab.kubectl_ok(&["apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", &f3]);
    let d = get(&lab, &["deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert!(entry(&d, "other").is_some_and(|e| e["fieldsV1"]["f:spec"]["f:replicas"].is_object()), "{d}");
    assert!(entry(&d, "kubectl").is_some_and(|e| e["fieldsV1"]["f:spec"].get("f:replicas").is_none()), "{d}");
    let yaml = lab.kubectl_ok(&["get", "deploy", "web", "-n", "ssa", "-o", "yaml", "--show-managed-fields"]);
    assert!(yaml.contains("manager: other") && yaml.contains("f:replicas: {}"), "{yaml}");

    // kubectl diff, client-side and server-side: 1 with a change, 0 without.
    let f4 = m.write("d4.yaml", &three.replace("replicas: 3", "replicas: 4"));
    for side in [&[][..], &["--server-side", "--field-manager=other"][..]] {
        let mut a = vec!["diff", "-f", &f4];
        a.extend_from_slice(side);
        let out = lab.kubectl(&a);
        assert_eq!(out.status.code(), Some(1), "{side:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("+  replicas: 4"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = lab.kubectl(&["diff", "--server-side", "--field-manager=other", "-f", &f3]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&lab, &["deploy", "web"])["spec"]["replicas"], 3, "a diff changes nothing");

    // set image and scale leave Update entries of their own.
    lab.kubectl_ok(&["set", "image", "deployment/web", "-n", "ssa", "c=registry.invalid/web:2"]);
    lab.kubectl_ok(&["scale", "deployment/web", "-n", "ssa", "--replicas=5"]);
    let d = get(&lab, &["deploy", "web"]);
    let set = entry(&d, "kubectl-set").unwrap_or_else(|| panic!("no kubectl-set entry: {d}"));
    assert_eq!(set["operation"], "Update", "{set}");
    assert!(
        set["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"].is_object(),
        "{set}"
    );
    let scaled = d["metadata"]["managedFields"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["subresource"] == "scale").cloned())
        .unwrap_or_else(|| panic!("no scale entry: {d}"));
    assert_eq!(scaled["operation"], "Update", "{scaled}");
    assert_eq!(scaled["fieldsV1"], serde_json::json!({"f:spec": {"f:replicas": {}}}), "{scaled}");
    assert!(entry(&d, "other").is_some_and(|e| e["fieldsV1"]["f:spec"].get("f:replicas").is_none()), "{d}");

    // expose: a Service created by kubectl-expose.
    lab.kubectl_ok(&["expose", "deployment", "web", "-n", "ssa", "--port=80"]);
    let s = get(&lab, &["svc", "web"]);
    assert!(entry(&s, "kubectl-expose").is_some_and(|e| e["operation"] == "Update"), "{s}");
}

#[test]
fn client_side_apply_moves_to_server_side() {
    let lab = Lab::up(&["--nodes", "0"]);
    let m = Manifests { dir: tempfile::tempdir().unwrap() };
    lab.kubectl_ok(&["create", "namespace", "ssa"]);
    let f = m.write("d.yaml", DEPLOYMENT);
    lab.kubectl_ok(&["apply", "-f", &f]);
    let d = get(&lab, &["deploy", "web"]);
    assert!(entry(&d, "kubectl-client-side-apply").is_some(), "{d}");
    // The same manifest server-side: no conflict, kubectl owns it.
    let out = lab.kubectl_ok(&["apply", "--server-side", "-f", &f]);
    assert!(out.contains("serverside-applied"), "{out}");
    let d = get(&lab, &["deploy", "web"]);
    let e = entry(&d, "kubectl").unwrap_or_else(|| panic!("no kubectl entry: {d}"));
    assert_eq!(e["operation"], "Apply");
    assert!(e["fieldsV1"]["f:spec"]["f:replicas"].is_object(), "{e}");
    // A changed replica count server-side: still no conflict with the client-side manager.
    let f2 = m.write("d2.yaml", &DEPLOYMENT.replace("replicas: 2", "replicas: 4"));
    lab.kubectl_ok(&["apply", "--server-side", "-f", &f2]);
    let d = get(&lab, &["deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 4);
    let ann = d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].as_str().unwrap_or("");
    assert!(ann.contains("\"replicas\":4"), "the annotation follows the apply: {ann}");
    // And kubectl apply without --server-side still works on it.
    lab.kubectl_ok(&["apply", "-f", &f2]);
}
