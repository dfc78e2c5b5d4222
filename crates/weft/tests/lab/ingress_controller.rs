//! The lab's ingress controller from deploy/ingress.yaml: its pod becomes Ready as ServiceAccount
//! weft-ingress, IngressClass `weft` is the default (an Ingress made without a class gets it from
//! the API's DefaultIngressClass admission), the `weft-ingress` LoadBalancer Service has a pool
//! address, every served Ingress's status carries that address (--publish-service), and an
//! annotation it refuses (a `*-snippet`) is a Warning Event naming it. Routing itself is
//! ingress.rs's.

use serde_json::Value;
use weft_testkit::Lab;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: web, labels: {app: echo}}
spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: web}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: plain, namespace: web}
spec:
  rules:
  - host: echo.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: snippet
  namespace: web
  annotations:
    nginx.ingress.kubernetes.io/configuration-snippet: "more_set_headers \"X-Evil: 1\";"
spec:
  rules:
  - host: snippet.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}
"#;

fn json(lab: &Lab, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&lab.kubectl_ok(&a)).unwrap()
}

fn lb_ip(v: &Value) -> String {
    v["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().unwrap_or("").to_string()
}

#[test]
fn the_controller_runs_from_its_manifest_and_writes_status_and_events() {
    let lab = Lab::up(&["--nodes", "2"]);
    // Its pod is Ready (the proxy's /healthz) and runs as its own ServiceAccount.
    let pods = lab.wait_running_labeled("kube-system", ("app.kubernetes.io/name", "weft-ingress"), 1);
    let pod = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(pods[0]["spec"]["serviceAccountName"], "weft-ingress", "{}", pods[0]);
    let token = lab.kubectl_ok(&["-n", "kube-system", "exec", &pod, "--", "cat", &format!("{SA_DIR}/token")]);
    let payload = token.trim().split('.').nth(1).expect("a JWT");
    use base64::Engine;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["sub"], "system:serviceaccount:kube-system:weft-ingress", "{claims}");

    // The default class.
    let class = json(&lab, &["get", "ingressclass", "weft"]);
    assert_eq!(class["spec"]["controller"], "weft.dev/ingress", "{class}");
    assert_eq!(class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"], "true", "{class}");

    // The Service in front of it takes a pool address.
    let mut lb = String::new();
    lab.wait_for("the weft-ingress Service's LoadBalancer address", 30, || {
        lb = lb_ip(&json(&lab, &["-n", "kube-system", "get", "service", "weft-ingress"]));
        !lb.is_empty()
    });
    assert!(lb.starts_with("172.18.255."), "{lb}");

    // Ingresses without a class get the default at create, and the address in their status.
    lab.apply_str(APP);
    for name in ["plain", "snippet"] {
        let ing = json(&lab, &["-n", "web", "get", "ingress", name]);
        assert_eq!(ing["spec"]["ingressClassName"], "weft", "{ing}");
    }
    let mut ing = Value::Null;
    lab.wait_for("the Ingress's status to carry the controller's address", 30, || {
        ing = json(&lab, &["-n", "web", "get", "ingress", "plain"]);
        lb_ip(&ing) == lb
    });
    // Written by the controller's own field manager, on the status subresource.
    let ing = json(&lab, &["-n", "web", "get", "ingress", "plain", "--show-managed-fields"]);
    let managers = ing["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    assert!(managers.iter().any(|m| m["manager"] == "weft-ingress" && m["subresource"] == "status"), "{ing}");

    // The snippet is refused: a Warning Event on its Ingress names the annotation.
    let mut events = Value::Null;
    lab.wait_for("a Warning Event naming the snippet annotation", 30, || {
        events = json(&lab, &["-n", "web", "get", "events", "--field-selector", "involvedObject.name=snippet"]);
        events["items"].as_array().is_some_and(|items| {
            items.iter().any(|e| {
                e["type"] == "Warning"
                    && e["involvedObject"]["kind"] == "Ingress"
                    && e["message"].as_str().is_some_and(|m| m.contains("configuration-snippet"))
            })
        })
    });
    // And the Normal Sync each served Ingress gets once.
    let plain = json(&lab, &["-n", "web", "get", "events", "--field-selector", "involvedObject.name=plain"]);
    let syncs = plain["items"].as_array().unwrap().iter().filter(|e| e["reason"] == "Sync").count();
    assert_eq!(syncs, 1, "{plain}");
}
