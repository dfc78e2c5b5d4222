//! Seed 000's ingress controller manifests (examples/seeds/as-written/ingress-controller.yaml:
//! Deployment, ConfigMap, NodePort Service, ServiceAccount, ClusterRole, Role and their bindings)
//! applied with the real kubectl, unchanged: everything is taken but the Deployment, which
//! kube-apiserver refuses for the seed's own typo (`metadata.namespaces`) with the same words;
//! fixed, it runs, and the ServiceAccount may do what its roles grant and nothing else.

use weft_testkit::{Lab, seed};

const SA: &str = "--as=system:serviceaccount:default:nginx-ingress-serviceaccount";

#[test]
fn the_seeds_ingress_controller_manifests_apply() {
    let lab = Lab::up(&[]);
    let file = seed("as-written/ingress-controller.yaml");
    let out = lab.kubectl(&["apply", "-f", &file]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the seed's typo is refused: {stdout}");
    assert!(
        stderr.contains(
            "The Deployment \"nginx-ingress-controller\" is invalid: spec.template.spec.containers[0].env[1].valueFrom.fieldRef.fieldPath: Invalid value: \"metadata.namespaces\": error converting fieldPath: field label not supported: metadata.namespaces"
        ),
        "{stderr}"
    );
    for made in [
        "configmap/nginx-configuration created",
        "service/my-service created",
        "serviceaccount/nginx-ingress-serviceaccount created",
        "clusterrole.rbac.authorization.k8s.io/nginx-ingress-clusterrole created",
        "role.rbac.authorization.k8s.io/nginx-ingress-role created",
        "rolebinding.rbac.authorization.k8s.io/nginx-ingress-role-nisa-binding created",
        "clusterrolebinding.rbac.authorization.k8s.io/nginx-ingress-clusterrole-nisa-binding created",
    ] {
        assert!(stdout.contains(made), "{made}: {stdout}");
    }

    // The field fixed, the Deployment is taken and its pod reads its namespace.
    let fixed = std::fs::read_to_string(&file).unwrap().replace("metadata.namespaces", "metadata.namespace");
    let dir = tempfile::tempdir().unwrap();
    let fixed_file = dir.path().join("ingress-controller.yaml");
    std::fs::write(&fixed_file, fixed).unwrap();
    let out = lab.kubectl_ok(&["apply", "-f", fixed_file.to_str().unwrap()]);
    assert!(out.contains("deployment.apps/nginx-ingress-controller created"), "{out}");
    assert!(out.contains("configmap/nginx-configuration unchanged"), "{out}");
    let pods = lab.wait_running("default", 1);
    let pod = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(pods[0]["spec"]["serviceAccountName"], "default", "the seed sets no serviceAccountName");
    let env = lab.kubectl_ok(&["exec", &pod, "--", "env"]);
    assert!(env.lines().any(|l| l == "POD_NAMESPACE=default"), "{env}");

    // What the roles grant the ServiceAccount, and no more.
    let can = |args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        a.push(SA);
        String::from_utf8_lossy(&lab.kubectl(&a).stdout).trim().to_string()
    };
    assert_eq!(can(&["list", "ingresses.networking.k8s.io", "-A"]), "yes");
    assert_eq!(can(&["update", "ingresses.networking.k8s.io", "--subresource=status", "-n", "default"]), "yes");
    assert_eq!(can(&["update", "configmaps/ingress-controller-leader-nginx", "-n", "default"]), "yes");
    assert_eq!(can(&["update", "configmaps/nginx-configuration", "-n", "default"]), "no");
    assert_eq!(can(&["delete", "pods", "-n", "default"]), "no");
    // Applied again, nothing changes.
    let again = lab.kubectl_ok(&["apply", "-f", fixed_file.to_str().unwrap()]);
    assert_eq!(again.matches("unchanged").count(), 8, "{again}");
}
