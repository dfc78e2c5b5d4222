//! The real kubectl against the embedded API, with the seeds' manifests and commands.

use weft_testkit::Lab;

#[test]
fn kubectl_drives_the_embedded_api() {
    let lab = Lab::up(&["--nodes", "0"]);
    let cip = Lab::fixture("cluster-ip.yaml");
    let np = Lab::fixture("nodeport-ip.yaml");

    // create -f, then apply -f twice (the second is an update).
    assert!(lab.kubectl_ok(&["create", "-f", &cip]).contains("service/my-service created"));
    assert!(lab.kubectl_ok(&["apply", "-f", &np]).contains("service/my-nodeport created"));
    let modified = lab.home.path().join("np2.yaml");
    std::fs::write(&modified, std::fs::read_to_string(&np).unwrap().replace("targetPort: 9376", "targetPort: 8080"))
        .unwrap();
    assert!(lab.kubectl_ok(&["apply", "-f", modified.to_str().unwrap()]).contains("service/my-nodeport configured"));
    assert!(lab.kubectl_ok(&["apply", "-f", modified.to_str().unwrap()]).contains("service/my-nodeport unchanged"));

    // get svc -o wide: kubectl's columns, the seed's nodePort, an allocated ClusterIP.
    let wide = lab.kubectl_ok(&["get", "svc", "-o", "wide"]);
    let header = wide.lines().next().unwrap();
    for col in ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"] {
        assert!(header.contains(col), "{header}");
    }
    let np_line = wide.lines().find(|l| l.starts_with("my-nodeport")).expect(&wide);
    assert!(
        np_line.contains("NodePort") && np_line.contains("80:32212/TCP") && np_line.contains("app=MyApp"),
        "{np_line}"
    );
    let ip = np_line.split_whitespace().nth(2).unwrap();
    let ip: std::net::Ipv4Addr = ip.parse().expect("a ClusterIP");
    assert!(ipnet::Ipv4Net::new("10.96.0.0".parse().unwrap(), 12).unwrap().contains(&ip));
    assert!(wide.lines().any(|l| l.starts_with("kubernetes") && l.contains("10.96.0.1")));

    // Paged lists (limit/continue) give the same objects as one list.
    let all = lab.kubectl_ok(&["get", "svc", "-A", "-o", "name"]);
    let paged = lab.kubectl_ok(&["get", "svc", "-A", "-o", "name", "--chunk-size=1"]);
    assert!(all.lines().count() >= 3 && paged == all, "{paged} vs {all}");
    let page: serde_json::Value =
        serde_json::from_str(&lab.kubectl_ok(&["get", "--raw", "/api/v1/services?limit=1"])).unwrap();
    assert_eq!(page["items"].as_array().map(|i| i.len()), Some(1));
    assert!(
        page["metadata"]["continue"].is_string() && page["metadata"]["remainingItemCount"].as_u64() >= Some(2),
        "{page}"
    );

    // describe shows the update.
    let d = lab.kubectl_ok(&["describe", "svc", "my-nodeport"]);
    assert!(d.contains("TargetPort:") && d.contains("8080/TCP"), "{d}");
    assert!(d.contains("32212/TCP"), "{d}");

    // run, expose pod (seed 000), label, annotate.
    assert!(lab.kubectl_ok(&["run", "nginx", "--image=nginx", "--labels=run=nginx"]).contains("pod/nginx created"));
    lab.kubectl_ok(&[
        "expose",
        "pod",
        "nginx",
        "--name",
        "nginx-service",
        "--type=ClusterIP",
        "--port=80",
        "--target-port=80",
        "--protocol=TCP",
    ]);
    lab.kubectl_ok(&[
        "expose",
        "pod",
        "nginx",
        "--name",
        "nginx-np",
        "--type=NodePort",
        "--port=80",
        "--target-port=80",
        "--protocol=TCP",
    ]);
    let sel = lab.kubectl_ok(&["get", "svc", "nginx-service", "-o", "jsonpath={.spec.selector.run}"]);
    assert_eq!(sel, "nginx");
    let npp = lab.kubectl_ok(&["get", "svc", "nginx-np", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    let npp: i32 = npp.parse().unwrap();
    assert!((30000..=32767).contains(&npp));
    lab.kubectl_ok(&["label", "svc", "nginx-service", "tier=web"]);
    assert_eq!(lab.kubectl_ok(&["get", "svc", "-l", "tier=web", "-o", "name"]).trim(), "service/nginx-service");
    lab.kubectl_ok(&["annotate", "svc", "nginx-service", "team=net"]);
    assert_eq!(lab.kubectl_ok(&["get", "svc", "nginx-service", "-o", "jsonpath={.metadata.annotations.team}"]), "net");

    // A Deployment: scale (the scale subresource) and expose deployment (seed 003).
    lab.kubectl_ok(&["apply", "-f", &Lab::fixture("nginx-deployment.yaml")]);
    assert!(lab.kubectl_ok(&["scale", "deployment/nginx-loadbalancer", "--replicas=2"]).contains("scaled"));
    assert_eq!(lab.kubectl_ok(&["get", "deploy", "nginx-loadbalancer", "-o", "jsonpath={.spec.replicas}"]), "2");
    lab.kubectl_ok(&[
        "expose",
        "deployment",
        "nginx-loadbalancer",
        "--port",
        "80",
        "--target-port",
        "8080",
        "--type",
        "LoadBalancer",
    ]);
    let lb = lab.kubectl_ok(&["get", "svc", "nginx-loadbalancer"]);
    assert!(lb.contains("LoadBalancer") && lb.contains("<pending>"), "{lb}");
    lab.kubectl_ok(&["annotate", "service", "nginx-loadbalancer", "ExternalTrafficPolicy=Local"]);

    // The seed's v1beta1 Ingress applies and reads back as v1.
    lab.apply_seed("ingress-v1beta1.yaml");
    let ing = lab.kubectl_ok(&[
        "get",
        "ingress",
        "test-ingress",
        "-o",
        "jsonpath={.spec.rules[0].http.paths[1].backend.service.name}",
    ]);
    assert_eq!(ing, "test");
    assert!(lab.kubectl_ok(&["get", "ingress"]).contains("online.com"));

    // The seeds' read-only commands.
    for args in [
        &["get", "pods", "-n", "kube-system"][..],
        &["get", "deploy", "-n", "kube-system"],
        &["get", "services", "-n", "kube-system"],
        &["get", "endpoints"],
        &["get", "all"],
    ] {
        lab.kubectl_ok(args);
    }

    // Validation errors come back as kubectl shows them.
    let bad = lab.home.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: 70000\n")
        .unwrap();
    let out = lab.kubectl(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.ports[0].port") && err.contains("between 1 and 65535"), "{err}");

    // delete, and the node port is free again.
    lab.kubectl_ok(&["delete", "svc", "my-nodeport"]);
    lab.kubectl_ok(&["delete", "-f", &cip]);
    let left = lab.kubectl_ok(&["get", "svc"]);
    assert!(!left.contains("my-nodeport") && !left.contains("my-service"), "{left}");
    assert!(lab.kubectl_ok(&["create", "-f", &np]).contains("created"));
    lab.kubectl_ok(&["delete", "deploy", "nginx-loadbalancer"]);
}
