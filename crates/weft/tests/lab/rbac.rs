//! RBAC with the real kubectl: roles and bindings made by `kubectl create`, listed with their
//! columns, `kubectl auth can-i` (for another user with `--as`, and `--list`), requests made
//! with a ServiceAccount's token allowed or refused with kube-apiserver's 403, escalation
//! refused, and the aggregated `admin` ClusterRole.

use serde_json::Value;
use weft_testkit::Lab;

fn can_i(lab: &Lab, args: &[&str]) -> String {
    let mut a = vec!["auth", "can-i"];
    a.extend_from_slice(args);
    let out = lab.kubectl(&a);
    // `can-i` exits 1 for "no": the answer is on stdout either way.
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn rbac_with_kubectl() {
    let lab = Lab::up(&["--nodes", "1"]);
    lab.kubectl_ok(&["create", "namespace", "x"]);
    lab.kubectl_ok(&["create", "serviceaccount", "bound", "-n", "x"]);
    lab.kubectl_ok(&["create", "serviceaccount", "unbound", "-n", "x"]);

    // Roles and bindings as kubectl's generators make them (protobuf bodies).
    let out = lab.kubectl_ok(&[
        "create",
        "role",
        "svc-reader",
        "-n",
        "x",
        "--verb=get,list",
        "--resource=services",
        "--resource=pods",
    ]);
    assert!(out.contains("role.rbac.authorization.k8s.io/svc-reader created"), "{out}");
    lab.kubectl_ok(&[
        "create",
        "role",
        "one-cm",
        "-n",
        "x",
        "--verb=get",
        "--resource=configmaps",
        "--resource-name=cfg",
    ]);
    lab.kubectl_ok(&[
        "create",
        "rolebinding",
        "read",
        "-n",
        "x",
        "--role=svc-reader",
        "--serviceaccount=x:bound",
        "--user=alice",
        "--group=devs",
    ]);
    lab.kubectl_ok(&["create", "clusterrole", "node-viewer", "--verb=get,list,watch", "--resource=nodes"]);
    lab.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "view-nodes",
        "--clusterrole=node-viewer",
        "--serviceaccount=x:bound",
    ]);
    lab.kubectl_ok(&["create", "clusterrole", "agg", "--aggregation-rule=rbac.example.com/aggregate-to-agg=true"]);
    lab.kubectl_ok(&["create", "clusterrole", "part", "--verb=get", "--resource=secrets"]);
    lab.kubectl_ok(&["label", "clusterrole", "part", "rbac.example.com/aggregate-to-agg=true"]);

    let role: Value =
        serde_json::from_str(&lab.kubectl_ok(&["get", "role", "one-cm", "-n", "x", "-o", "json"])).unwrap();
    assert_eq!(role["rules"][0]["resourceNames"], serde_json::json!(["cfg"]), "{role}");

    // The columns of kube-apiserver's printers.
    let out = lab.kubectl_ok(&["get", "rolebinding", "read", "-n", "x", "-o", "wide"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"], "{out}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[1], row[3], row[4], row[5]),
        ("read", "Role/svc-reader", "alice", "devs", "x/bound"),
        "{out}"
    );
    let out = lab.kubectl_ok(&["get", "role", "-n", "x"]);
    assert!(out.starts_with("NAME") && out.lines().next().unwrap().contains("CREATED AT"), "{out}");
    assert!(out.contains("svc-reader") && out.contains("one-cm"), "{out}");
    let out = lab.kubectl_ok(&["get", "clusterrole", "cluster-admin", "view", "edit", "admin"]);
    assert_eq!(out.lines().count(), 5, "{out}");
    let out = lab.kubectl_ok(&["get", "clusterrolebinding", "view-nodes", "-o", "wide"]);
    assert!(out.contains("ClusterRole/node-viewer") && out.contains("x/bound"), "{out}");

    // kubectl auth can-i, for another user (impersonation) and for the admin.
    assert_eq!(can_i(&lab, &["list", "services", "-n", "x", "--as", "system:serviceaccount:x:bound"]), "yes");
    assert_eq!(can_i(&lab, &["list", "services", "-n", "x", "--as", "system:serviceaccount:x:unbound"]), "no");
    assert_eq!(can_i(&lab, &["delete", "services", "-n", "x", "--as", "system:serviceaccount:x:bound"]), "no");
    assert_eq!(can_i(&lab, &["get", "configmaps/cfg", "-n", "x", "--as", "alice"]), "no");
    assert_eq!(
        can_i(&lab, &["get", "pods", "--subresource=log", "-n", "x", "--as", "system:serviceaccount:x:bound"]),
        "no"
    );
    assert_eq!(can_i(&lab, &["list", "nodes", "--as", "system:serviceaccount:x:bound"]), "yes");
    assert_eq!(can_i(&lab, &["create", "deployments.apps", "-n", "x"]), "yes");
    let list = lab.kubectl_ok(&["auth", "can-i", "--list", "-n", "x", "--as", "system:serviceaccount:x:bound"]);
    assert!(list.lines().any(|l| l.starts_with("services ") && l.contains("[get list]")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("nodes ") && l.contains("[get list watch]")), "{list}");
    assert!(list.contains("selfsubjectaccessreviews.authorization.k8s.io"), "{list}");
    let admin_list = lab.kubectl_ok(&["auth", "can-i", "--list"]);
    assert!(admin_list.lines().any(|l| l.starts_with("*.*") && l.contains("[*]")), "{admin_list}");

    // A request with the ServiceAccount's own token: what its Role grants, and kube-apiserver's 403.
    let token = lab.kubectl_ok(&["create", "token", "bound", "-n", "x"]).trim().to_string();
    let as_bound = |args: &[&str]| {
        let mut a = vec!["--token", token.as_str()];
        a.extend_from_slice(args);
        lab.kubectl(&a)
    };
    let out = as_bound(&["get", "services", "-n", "x"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = as_bound(&["get", "secrets", "-n", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "secrets is forbidden: User \"system:serviceaccount:x:bound\" cannot list resource \"secrets\" in API group \"\" in the namespace \"x\""
        ),
        "{err}"
    );
    let out = as_bound(&["get", "services", "-n", "default"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in the namespace \"default\""));

    // Escalation: the account may not create a Role granting more than it holds.
    lab.kubectl_ok(&[
        "create",
        "role",
        "role-maker",
        "-n",
        "x",
        "--verb=create",
        "--resource=roles.rbac.authorization.k8s.io",
    ]);
    lab.kubectl_ok(&[
        "create",
        "rolebinding",
        "make-roles",
        "-n",
        "x",
        "--role=role-maker",
        "--serviceaccount=x:bound",
    ]);
    let out = as_bound(&["create", "role", "ok", "-n", "x", "--verb=get", "--resource=services"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = as_bound(&["create", "role", "too-much", "-n", "x", "--verb=delete", "--resource=services"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "roles.rbac.authorization.k8s.io \"too-much\" is forbidden: user \"system:serviceaccount:x:bound\""
        ) && err.contains("is attempting to grant RBAC permissions not currently held:")
            && err.contains("{APIGroups:[\"\"], Resources:[\"services\"], Verbs:[\"delete\"]}"),
        "{err}"
    );

    // The aggregated ClusterRoles get their rules from the controller.
    lab.wait_for("admin's aggregated rules", 30, || {
        let admin: Value =
            serde_json::from_str(&lab.kubectl_ok(&["get", "clusterrole", "admin", "-o", "json"])).unwrap_or_default();
        let rules = admin["rules"].as_array().cloned().unwrap_or_default();
        let has = |group: &str, resource: &str| {
            rules.iter().any(|r| {
                r["apiGroups"].as_array().is_some_and(|g| g.iter().any(|x| x == group))
                    && r["resources"].as_array().is_some_and(|g| g.iter().any(|x| x == resource))
            })
        };
        has("rbac.authorization.k8s.io", "rolebindings") && has("apps", "deployments") && has("", "pods")
    });
    let yaml = lab.kubectl_ok(&["get", "clusterrole", "admin", "-o", "yaml"]);
    assert!(yaml.contains("aggregate-to-admin") && yaml.contains("localsubjectaccessreviews"), "{yaml}");
    lab.wait_for("agg's rules", 30, || {
        let agg: Value =
            serde_json::from_str(&lab.kubectl_ok(&["get", "clusterrole", "agg", "-o", "json"])).unwrap_or_default();
        agg["rules"].as_array().is_some_and(|r| r.iter().any(|x| x["resources"] == serde_json::json!(["secrets"])))
    });
}

/// kubectl opens an exec with a WebSocket GET; like kube-apiserver since 1.31, the server asks
/// for `create` on `pods/exec` as well, so a role that only reads pods' subresources cannot run
/// commands in them.
#[test]
fn exec_needs_create_on_pods_exec() {
    let lab = Lab::up(&["--nodes", "1"]);
    lab.kubectl_ok(&["create", "namespace", "ex"]);
    lab.kubectl_ok(&["create", "serviceaccount", "reader", "-n", "ex"]);
    lab.kubectl_ok(&["create", "role", "read-exec", "-n", "ex", "--verb=get", "--resource=pods,pods/exec"]);
    lab.kubectl_ok(&[
        "create",
        "rolebinding",
        "read-exec",
        "-n",
        "ex",
        "--role=read-exec",
        "--serviceaccount=ex:reader",
    ]);
    lab.kubectl_ok(&["run", "sleeper", "-n", "ex", "--image=busybox", "--", "sleep", "3600"]);
    lab.wait_running("ex", 1);
    let token = lab.kubectl_ok(&["create", "token", "reader", "-n", "ex"]).trim().to_string();
    let exec = || lab.kubectl(&["--token", &token, "exec", "-n", "ex", "sleeper", "--", "true"]);
    let out = exec();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "get alone must not exec");
    assert!(
        err.contains("User \"system:serviceaccount:ex:reader\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"ex\""),
        "{err}"
    );
    lab.kubectl_ok(&["create", "role", "exec", "-n", "ex", "--verb=create", "--resource=pods/exec"]);
    lab.kubectl_ok(&["create", "rolebinding", "exec", "-n", "ex", "--role=exec", "--serviceaccount=ex:reader"]);
    let out = exec();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
