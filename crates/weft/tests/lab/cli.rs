//! The weft CLI: up/down, apply/get/describe/delete, lab selection.

use weft_testkit::Lab;

#[test]
fn weft_cli_round_trip() {
    let lab = Lab::up(&["--nodes", "0"]);
    // A second `up` changes nothing.
    let again = lab.weft_ok(&["up"]);
    assert!(again.contains("already up"), "{again}");
    let np = Lab::fixture("nodeport-ip.yaml");
    assert!(lab.weft_ok(&["apply", "-f", &np]).contains("service/my-nodeport created"));
    assert!(lab.weft_ok(&["apply", "-f", &np]).contains("service/my-nodeport unchanged"));
    let dir = lab.home.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(Lab::fixture("cluster-ip.yaml"), dir.join("a.yaml")).unwrap();
    std::fs::copy(Lab::fixture("nginx-deployment.yaml"), dir.join("b.yaml")).unwrap();
    let out = lab.weft_ok(&["apply", "-f", dir.to_str().unwrap()]);
    assert!(
        out.contains("service/my-service created") && out.contains("deployment.apps/nginx-loadbalancer created"),
        "{out}"
    );

    let get = lab.weft_ok(&["get", "svc"]);
    assert!(get.starts_with("NAME"), "{get}");
    assert!(get.lines().any(|l| l.starts_with("my-nodeport") && l.contains("80:32212/TCP")), "{get}");
    assert!(!get.contains("SELECTOR"));
    assert!(lab.weft_ok(&["get", "svc", "-o", "wide"]).contains("app=MyApp"));
    let all = lab.weft_ok(&["get", "ns", "-A"]);
    assert!(all.contains("kube-system"));
    let y = lab.weft_ok(&["get", "svc", "my-nodeport", "-o", "yaml"]);
    assert!(y.contains("nodePort: 32212"), "{y}");
    let j: serde_json::Value = serde_json::from_str(&lab.weft_ok(&["get", "deploy", "-o", "json"])).unwrap();
    assert_eq!(j["items"][0]["metadata"]["name"], "nginx-loadbalancer");
    let d = lab.weft_ok(&["describe", "svc", "my-nodeport"]);
    assert!(d.contains("NodePort:") && d.contains("32212/TCP"), "{d}");

    // Errors name the problem.
    let bad = lab.weft(&["get", "nonsense"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("doesn't have a resource type"));
    let missing = lab.weft(&["delete", "svc", "nope"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));

    assert!(lab.weft_ok(&["delete", "-f", &np]).contains("\"my-nodeport\" deleted"));
    assert!(lab.weft_ok(&["delete", "svc", "my-service"]).contains("deleted"));
    assert!(lab.weft_ok(&["kubeconfig"]).contains("certificate-authority-data"));
    let st = lab.weft_ok(&["status"]);
    assert!(st.contains("running") && st.contains("apiserver:  ok"), "{st}");

    // Credentials are private.
    use std::os::unix::fs::PermissionsExt;
    for f in ["token", "apiserver.key", "ca.key", "kubeconfig"] {
        let mode = std::fs::metadata(lab.state_dir().join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let state = lab.state_dir();
    let down = lab.weft_ok(&["down"]);
    assert!(down.contains("is down"));
    assert!(!state.exists());
}
