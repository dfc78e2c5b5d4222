//! hostNetwork pods: the kubelet runs them in their node's network namespace, with the node's
//! address and hostname and no CNI attachment. Their ports are the node's (kube-apiserver
//! defaults each hostPort to the containerPort, and the scheduler keeps a second pod that wants
//! the same port off that node); other pods and Services reach them at the node's address; and
//! deleting one leaves the node's network as it was.

use serde_json::Value;
use weft_testkit::Lab;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: hostnet, labels: {app: hostnet}}
spec:
  hostNetwork: true
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers:
  - {name: web, image: nginx, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeSelector: {kubernetes.io/hostname: node-1}
  containers:
  - {name: c, image: nginx, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: hostnet}
spec:
  selector: {app: hostnet}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// Wants node-2's port 8080 too.
const SECOND: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: second}
spec:
  hostNetwork: true
  nodeSelector: {kubernetes.io/hostname: node-2}
  containers:
  - {name: web, image: nginx, ports: [{containerPort: 8080}]}
"#;

fn pod(lab: &Lab, name: &str) -> Value {
    serde_json::from_str(&lab.kubectl_ok(&["get", "pod", name, "-o", "json"])).unwrap()
}

#[test]
fn host_network_pods_run_in_their_nodes_network() {
    let lab = Lab::up(&[]);
    lab.apply_str(PODS);
    lab.wait_running("default", 2);
    let hn = pod(&lab, "hostnet");
    let node_ip = lab.kubectl_ok(&[
        "get",
        "node",
        "node-2",
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    let node_ip = node_ip.trim();
    assert!(!node_ip.is_empty());
    assert_eq!(hn["spec"]["nodeName"], "node-2");
    assert_eq!(hn["status"]["podIP"], node_ip, "a hostNetwork pod has its node's address: {}", hn["status"]);
    assert_eq!(hn["status"]["hostIP"], node_ip);
    assert_eq!(hn["spec"]["containers"][0]["ports"][0]["hostPort"], 8080, "hostPort defaults to containerPort");

    // Inside: the node's hostname and interfaces.
    assert_eq!(lab.exec_ok(&["hostnet"], &["hostname"]).trim(), "node-2");
    let addrs = lab.exec_ok(&["hostnet"], &["ip", "-4", "-o", "addr", "show"]);
    assert!(addrs.contains(&format!(" {node_ip}/")), "the node's address is the pod's own: {addrs}");
    let sb = lab.sandbox("hostnet").unwrap();
    assert_eq!(sb["host_network"], true);
    assert!(sb["netns"].as_str().unwrap().ends_with("node-2"), "{sb}");
    assert!(
        !lab.netns_left().iter().any(|n| n.contains(sb["uid"].as_str().unwrap())),
        "no namespace of its own: {:?}",
        lab.netns_left()
    );

    // From a pod on another node, at the node's address and through the Service.
    let direct = lab.http_json(&["client"], &format!("http://{node_ip}:8080/"));
    assert_eq!((direct["pod"].as_str(), direct["podIP"].as_str()), (Some("hostnet"), Some(node_ip)), "{direct}");
    let cluster_ip = lab.kubectl_ok(&["get", "svc", "hostnet", "-o", "jsonpath={.spec.clusterIP}"]);
    let mut via = Value::Null;
    lab.wait_for("the Service to reach the hostNetwork pod", 30, || {
        let o = lab.exec(&["client"], &["curl", "-s", "-m", "3", &format!("http://{}/", cluster_ip.trim())]);
        via = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        via["pod"] == "hostnet"
    });
    assert_eq!(via["port"], 8080);
    // And from the node's own namespace (the hostNetwork pod itself) Services work too.
    let from_node = lab.http_json(&["hostnet"], &format!("http://{}/", cluster_ip.trim()));
    assert_eq!(from_node["pod"], "hostnet", "{from_node}");

    // Its port is taken on node-2: a second pod wanting it waits, saying why.
    lab.apply_str(SECOND);
    lab.wait_for("the second pod to be refused a node", 30, || {
        let p = pod(&lab, "second");
        p["spec"]["nodeName"].is_null()
            && p["status"]["conditions"].as_array().into_iter().flatten().any(|c| {
                c["reason"] == "Unschedulable"
                    && c["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("didn't have free ports for the requested pod ports")
            })
    });

    // Deleted, it takes nothing of the node's network with it; the second one gets the port.
    lab.kubectl_ok(&["delete", "pod", "hostnet", "--wait=true", "--timeout=60s"]);
    let node_ns = sb["netns"].as_str().unwrap();
    assert!(lab.netns_left().iter().any(|n| n == node_ns), "the node's namespace is still there");
    assert!(
        lab.exec_ok(&["--node", "node-2"], &["ip", "-4", "-o", "addr", "show"]).contains(&format!(" {node_ip}/")),
        "and so is its address"
    );
    lab.wait_for("the second pod to run on node-2 and answer", 60, || {
        let o = lab.exec(&["client"], &["curl", "-s", "-m", "3", &format!("http://{node_ip}:8080/")]);
        serde_json::from_slice::<Value>(&o.stdout).is_ok_and(|v| v["pod"] == "second")
    });
}
