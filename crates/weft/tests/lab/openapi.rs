//! The OpenAPI documents as the real kubectl uses them: `kubectl explain` reads the v3 schemas
//! (fields, types, descriptions, GVK), and `kubectl apply --validate=strict` finds
//! `fieldValidation` on PATCH and leaves strict validation to the server.

use std::io::Write;
use std::process::{Command, Stdio};

use weft_testkit::Lab;

/// `kubectl ARGS` with `stdin` on its standard input.
fn kubectl_stdin(lab: &Lab, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(weft_testkit::lab::kubectl_bin())
        .arg("--kubeconfig")
        .arg(lab.kubeconfig())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writing kubectl's stdin");
    // kubectl reads the manifest and answers at once; its own request timeout bounds the wait.
    let out = child.wait_with_output().expect("kubectl ran");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn deployment(extra_container_field: &str, replicas: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
{extra_container_field}"
    )
}

/// A field line of `kubectl explain`'s FIELDS section: its name and type, as `name\t<type>`.
fn has_field(out: &str, name: &str, ty: &str) -> bool {
    out.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some(name) && words.next() == Some(ty)
    })
}

#[test]
fn kubectl_explain_and_strict_validation_use_the_schemas() {
    let lab = Lab::up(&["--nodes", "0"]);

    // explain of a nested field: its type, description and the fields below it.
    let out = lab.kubectl_ok(&["explain", "service.spec.ports"]);
    assert!(out.contains("KIND:       Service") && out.contains("VERSION:    v1"), "{out}");
    assert!(out.contains("FIELD: ports <[]ServicePort>"), "{out}");
    assert!(out.contains("The list of ports that are exposed by this service"), "{out}");
    assert!(has_field(&out, "port", "<integer>"), "{out}");
    assert!(has_field(&out, "targetPort", "<IntOrString>"), "{out}");
    assert!(has_field(&out, "protocol", "<string>"), "{out}");
    assert!(has_field(&out, "nodePort", "<integer>"), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("port") && l.contains("-required-")), "{out}");

    // --recursive walks the whole tree, through the $refs.
    let out = lab.kubectl_ok(&["explain", "deployment.spec.template.spec.containers", "--recursive"]);
    assert!(out.contains("GROUP:      apps") && out.contains("KIND:       Deployment"), "{out}");
    for field in ["containerPort", "livenessProbe", "httpGet", "readOnlyRootFilesystem", "mountPath"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(field)), "{field} in {out}");
    }

    // A kind: its group, kind, version and description.
    let out = lab.kubectl_ok(&["explain", "pods"]);
    assert!(out.contains("KIND:       Pod") && out.contains("VERSION:    v1"), "{out}");
    assert!(out.contains("Pod is a collection of containers that can run on a host"), "{out}");
    assert!(has_field(&out, "spec", "<PodSpec>"), "{out}");
    let out = lab.kubectl_ok(&["explain", "deployments"]);
    assert!(out.contains("GROUP:      apps") && out.contains("VERSION:    v1"), "{out}");
    let out = lab.kubectl_ok(&["explain", "roles"]);
    assert!(out.contains("GROUP:      rbac.authorization.k8s.io"), "{out}");

    // A field that does not exist is named by kubectl from the schema.
    let out = lab.kubectl(&["explain", "service.spec.nosuchfield"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nosuchfield"), "{err}");

    // Strict validation: an unknown field is refused, naming it; nothing is created.
    let bad = deployment("        imagePullPolicyy: Always\n", "2");
    let (ok, out) = kubectl_stdin(&lab, &["apply", "--validate=strict", "-f", "-"], &bad);
    assert!(!ok, "{out}");
    assert!(
        out.contains("strict decoding error: unknown field \"spec.template.spec.containers[0].imagePullPolicyy\""),
        "{out}"
    );
    assert!(!lab.kubectl(&["get", "deployment", "web"]).status.success(), "nothing was created");

    // A string where an integer goes is refused too.
    let (ok, out) = kubectl_stdin(&lab, &["apply", "--validate=strict", "-f", "-"], &deployment("", "two"));
    assert!(!ok, "{out}");
    assert!(out.contains("BadRequest") && out.contains("Deployment") && out.contains("\"two\""), "{out}");
    assert!(!lab.kubectl(&["get", "deployment", "web"]).status.success(), "nothing was created");

    // The same manifest, well formed, passes a server-side dry run and then applies.
    let good = deployment("        imagePullPolicy: Always\n", "2");
    let (ok, out) = kubectl_stdin(&lab, &["create", "--dry-run=server", "-f", "-"], &good);
    assert!(ok && out.contains("deployment.apps/web created (server dry run)"), "{out}");
    assert!(!lab.kubectl(&["get", "deployment", "web"]).status.success(), "a dry run stores nothing");
    let (ok, out) = kubectl_stdin(&lab, &["apply", "--validate=strict", "-f", "-"], &good);
    assert!(ok && out.contains("deployment.apps/web created"), "{out}");
}
