//! What a hostile or careless object must not do to a lab: take other Services down, brick the
//! store, or write when asked for a dry run.

mod common;
use common::TestLab;
use serde_json::Value;

const COLLIDING: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: a}}
spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: b}}
spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: first}
spec:
  selector: {app: a}
  externalIPs: [172.18.100.5]
  ports: [{port: 80, targetPort: 8080}]
"#;

const SECOND: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: second}
spec:
  selector: {app: b}
  externalIPs: [172.18.100.5]
  ports: [{port: 80, targetPort: 8080}]
"#;

const THIRD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: third}
spec:
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080}]
"#;

fn json(lab: &TestLab, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&lab.weft_ok(&a)).unwrap()
}

#[test]
fn two_colliding_services_take_no_other_service_down() {
    let lab = TestLab::up(&["--nodes", "2"]);
    lab.kubectl_ok(&[
        "patch",
        "configmap",
        "weft-config",
        "-n",
        "kube-system",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"externalIPCIDRs":"172.18.100.0/24"}}"#,
    ]);
    lab.apply_str(COLLIDING);
    lab.wait_running("default", 2);
    // Creation times have a resolution of a second: `second` is younger than `first`.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    lab.apply_str(SECOND);
    lab.apply_str(THIRD);
    let third = json(&lab, &["get", "svc", "third"])["spec"]["clusterIP"].as_str().unwrap().to_string();
    for node in ["node-1", "node-2"] {
        lab.wait_for(&format!("the unrelated Service answering on {node}"), 20, || {
            lab.exec(&["--node", node], &["curl", "-s", "-m", "2", &format!("http://{third}/")])
                .stdout
                .starts_with(b"{")
        });
        assert_eq!(lab.http_json(&["--node", node], &format!("http://{third}/"))["pod"], "b");
        // The older Service keeps the contested address.
        assert_eq!(lab.http_json(&["--node", node], "http://172.18.100.5/")["pod"], "a");
    }
    // The younger one is told why, and every node's proxy says it is fine.
    lab.wait_for("an AddressConflict event", 20, || {
        json(&lab, &["get", "events"])["items"].as_array().unwrap().iter().any(|e| {
            e["reason"] == "AddressConflict"
                && e["involvedObject"]["name"] == "second"
                && e["message"].as_str().unwrap().contains("default/first")
        })
    });
    for n in json(&lab, &["get", "nodes"])["items"].as_array().unwrap() {
        let conds = n["status"]["conditions"].as_array().unwrap();
        let c = conds.iter().find(|c| c["type"] == "ServiceProxyReady").expect("a ServiceProxyReady condition");
        assert_eq!(c["status"], "True", "{c}");
        assert!(conds.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"), "Ready kept: {conds:?}");
    }
    // When the older Service goes, the younger one takes the address over.
    lab.weft_ok(&["delete", "svc", "first"]);
    lab.wait_for("the address handed over", 20, || {
        let out = lab.exec(&["--node", "node-1"], &["curl", "-s", "-m", "2", "http://172.18.100.5/"]).stdout;
        serde_json::from_slice::<Value>(&out).is_ok_and(|v| v["pod"] == "b")
    });
    assert!(lab.weft_ok(&["status"]).contains("proxy:      node-1 ok"));
}
