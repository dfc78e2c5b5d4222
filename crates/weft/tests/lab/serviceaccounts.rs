//! ServiceAccounts, bound tokens and pods as in-cluster clients, with the real kubectl and curl:
//! `kubectl create token` and a request with it, `kubectl auth whoami`, `weft kubeconfig --as`,
//! a token bound to a deleted pod, forged tokens (another key, `alg: none`, expired, another
//! audience, huge, garbage), the files a pod sees at
//! `/var/run/secrets/kubernetes.io/serviceaccount` (and the host does not), and HTTPS from a pod
//! to `kubernetes.default.svc` and 10.96.0.1 verified with that `ca.crt` and that token.

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use weft_apiserver::tokens::{self, Bound, Keys, ObjectRef};
use weft_testkit::Lab;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `kubectl auth whoami -o json` with `token` instead of the admin's.
fn whoami(lab: &Lab, token: &str) -> Output {
    lab.kubectl(&["--token", token, "auth", "whoami", "-o", "json"])
}

fn whoami_ok(lab: &Lab, token: &str) -> Value {
    let o = whoami(lab, token);
    assert!(o.status.success(), "whoami with the token failed: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn assert_unauthorized(lab: &Lab, token: &str, what: &str) {
    let o = lab.kubectl(&["--token", token, "get", "namespaces"]);
    assert!(!o.status.success(), "{what}: the API took it: {}", text(&o));
    assert!(text(&o).contains("Unauthorized"), "{what}: not a 401: {}", text(&o));
}

#[test]
fn tokens_authenticate_as_their_service_account_and_forgeries_do_not() {
    let lab = Lab::up(&["--nodes", "1"]);
    lab.kubectl_ok(&["create", "namespace", "team"]);
    // Every namespace has its default ServiceAccount and the root CA from its creation on.
    lab.kubectl_ok(&["-n", "team", "get", "serviceaccount", "default"]);
    let ca = lab.kubectl_ok(&["-n", "team", "get", "configmap", "kube-root-ca.crt", "-o", "jsonpath={.data.ca\\.crt}"]);
    let lab_ca = std::fs::read_to_string(lab.state_dir().join("ca.crt")).unwrap();
    assert_eq!(ca.trim(), lab_ca.trim());

    lab.kubectl_ok(&["-n", "team", "create", "serviceaccount", "robot"]);
    let token = lab.kubectl_ok(&["-n", "team", "create", "token", "robot"]).trim().to_string();
    let me = whoami_ok(&lab, &token);
    assert_eq!(me["status"]["userInfo"]["username"], "system:serviceaccount:team:robot", "{me}");
    let groups = me["status"]["userInfo"]["groups"].to_string();
    for g in ["system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"] {
        assert!(groups.contains(&format!("\"{g}\"")), "{g} missing: {me}");
    }

    // `weft kubeconfig --as` gives a kubeconfig whose user is that ServiceAccount.
    let kc = lab.weft_ok(&["kubeconfig", "--as", "team/robot"]);
    let kc_path = lab.home.path().join("robot.kubeconfig");
    std::fs::write(&kc_path, kc).unwrap();
    let o = lab.kubectl(&[
        "--kubeconfig",
        kc_path.to_str().unwrap(),
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "system:serviceaccount:team:robot", "{}", text(&o));

    // TokenRequest's bounds, in kube-apiserver's words.
    let o = lab.kubectl(&["-n", "team", "create", "token", "robot", "--duration", "5m"]);
    assert!(text(&o).contains("may not specify a duration less than 10m0s"), "{}", text(&o));
    let o = lab.kubectl(&["-n", "team", "create", "token", "nobody"]);
    assert!(text(&o).contains("serviceaccounts \"nobody\" not found"), "{}", text(&o));

    // A token for another audience is no token for the API.
    let other = lab.kubectl_ok(&["-n", "team", "create", "token", "robot", "--audience", "vault"]).trim().to_string();
    assert_unauthorized(&lab, &other, "a token for audience vault");

    // Forgeries: another key, alg none, expired (signed with the lab's own key), huge, garbage.
    let sa_uid = lab.kubectl_ok(&["-n", "team", "get", "sa", "robot", "-o", "jsonpath={.metadata.uid}"]);
    let robot = ObjectRef { name: "robot".into(), uid: sa_uid };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = tokens::claims("team", robot.clone(), Bound::None, vec![tokens::ISSUER.into()], 3600, now);
    let foreign = Keys::generate().unwrap().sign(&claims).unwrap();
    assert_unauthorized(&lab, &foreign, "a token signed with another key");
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(&serde_json::to_vec(&claims).unwrap()));
    assert_unauthorized(&lab, &none, "an alg:none token");
    let lab_key = Keys::load_or_create(&lab.state_dir()).unwrap();
    let expired = tokens::claims("team", robot, Bound::None, vec![tokens::ISSUER.into()], 600, now - 3600);
    assert_unauthorized(&lab, &lab_key.sign(&expired).unwrap(), "an expired token");
    assert_unauthorized(
        &lab,
        &format!("{}.{}.{}", "a".repeat(5000), "b".repeat(5000), "c".repeat(5000)),
        "a huge token",
    );
    // Past HTTP/2's header list limit (16 KiB) the connection's own 431 answers first; or,
    // when the server's SETTINGS reached kubectl before its request, kubectl's HTTP/2 client
    // refuses to send it, quoting the limit the server advertised (a race in the client).
    let o = lab.kubectl(&["--token", &"x".repeat(40_000), "get", "namespaces"]);
    let said = text(&o);
    assert!(
        !o.status.success()
            && (said.contains("431") || said.contains("request header list larger than peer's advertised limit")),
        "an oversized token: {said}"
    );
    for garbage in ["x", "a.b.c", "....", "e30.e30.e30"] {
        assert_unauthorized(&lab, garbage, garbage);
    }
    // The API still serves after all of that.
    lab.kubectl_ok(&["get", "namespaces"]);

    // A TokenReview says why a token is refused.
    let review = format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{}"}}}}"#,
        lab_key.sign(&expired).unwrap()
    );
    let f = lab.home.path().join("review.json");
    std::fs::write(&f, review).unwrap();
    let out = lab.kubectl_ok(&["create", "-f", f.to_str().unwrap(), "-o", "json"]);
    assert!(out.contains("service account token has expired"), "{out}");

    // A deleted ServiceAccount's tokens stop working; the default one comes back by itself.
    lab.kubectl_ok(&["-n", "team", "delete", "serviceaccount", "robot"]);
    assert_unauthorized(&lab, &token, "the token of a deleted ServiceAccount");
    lab.kubectl_ok(&["-n", "team", "delete", "serviceaccount", "default"]);
    lab.wait_for("the default ServiceAccount to come back", 30, || {
        lab.kubectl(&["-n", "team", "get", "serviceaccount", "default"]).status.success()
    });
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: team}
spec:
  nodeName: NODE
  containers:
  - {name: c, image: busybox, command: [sleep, "100000"]}
"#;

#[test]
fn pods_are_in_cluster_clients_with_bound_tokens() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.kubectl_ok(&["create", "namespace", "team"]);
    let f = lab.home.path().join("pod.yaml");
    // On the node that does not serve the API, so the Service's traffic crosses the lab.
    std::fs::write(&f, POD.replace("NODE", "node-2")).unwrap();
    lab.kubectl_ok(&["create", "-f", f.to_str().unwrap()]);
    let pod: Value =
        serde_json::from_str(&lab.kubectl_ok(&["-n", "team", "get", "pod", "client", "-o", "json"])).unwrap();
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    let vol = pod["spec"]["volumes"][0]["name"].as_str().unwrap_or("").to_string();
    assert!(vol.starts_with("kube-api-access-") && vol.len() == 21, "{pod}");
    assert_eq!(pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], SA_DIR);
    lab.kubectl_ok(&["-n", "team", "wait", "--for=condition=Ready", "pod/client", "--timeout=60s"]);

    let exec = |cmd: &str| lab.kubectl(&["-n", "team", "exec", "client", "--", "sh", "-c", cmd]);
    let ns = exec(&format!("cat {SA_DIR}/namespace"));
    assert_eq!(String::from_utf8_lossy(&ns.stdout), "team", "{}", text(&ns));
    let ca = exec(&format!("cat {SA_DIR}/ca.crt"));
    let lab_ca = std::fs::read_to_string(lab.state_dir().join("ca.crt")).unwrap();
    assert_eq!(String::from_utf8_lossy(&ca.stdout).trim(), lab_ca.trim(), "{}", text(&ca));
    let token = String::from_utf8_lossy(&exec(&format!("cat {SA_DIR}/token")).stdout).to_string();
    // The kubelet's atomic-writer layout, mounted read-only.
    let ls = exec(&format!("ls -a {SA_DIR}; readlink {SA_DIR}/token; touch {SA_DIR}/x || echo read-only"));
    let ls = text(&ls);
    assert!(ls.contains("..data") && ls.contains("..data/token") && ls.contains("read-only"), "{ls}");
    // The host sees none of it.
    assert!(!Path::new(SA_DIR).exists(), "the pod's mount shows on the host");

    // The token is bound to the pod and authenticates as its ServiceAccount.
    let me = whoami_ok(&lab, &token);
    assert_eq!(me["status"]["userInfo"]["username"], "system:serviceaccount:team:default", "{me}");
    assert_eq!(me["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"][0], "client", "{me}");

    // In-cluster HTTPS from the pod, as client-go's in-cluster config does it: the Service's name
    // through the cluster DNS and its address from the environment, the server verified against
    // ca.crt, the token as the bearer.
    let env = text(&exec("echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"));
    assert_eq!(env.trim(), "10.96.0.1:443");
    let review = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    for url in ["https://kubernetes.default.svc", "https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}"] {
        let cmd = format!(
            "curl -sS --max-time 10 --cacert {SA_DIR}/ca.crt -H \"Authorization: Bearer $(cat {SA_DIR}/token)\" \
             -H 'Content-Type: application/json' -d '{review}' {url}/apis/authentication.k8s.io/v1/selfsubjectreviews"
        );
        let o = exec(&cmd);
        assert!(text(&o).contains("system:serviceaccount:team:default"), "{url} from the pod: {}", text(&o));
    }

    // A pod-bound token from `kubectl create token` stops working when its pod goes.
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let bound = lab
        .kubectl_ok(&[
            "-n",
            "team",
            "create",
            "token",
            "default",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "client",
            "--bound-object-uid",
            uid,
        ])
        .trim()
        .to_string();
    whoami_ok(&lab, &bound);
    lab.kubectl_ok(&["-n", "team", "delete", "pod", "client", "--grace-period=0", "--force"]);
    lab.wait_for("the pod's removal", 30, || !lab.kubectl(&["-n", "team", "get", "pod", "client"]).status.success());
    assert_unauthorized(&lab, &bound, "a token bound to a deleted pod");
    assert_unauthorized(&lab, &token, "the deleted pod's projected token");

    // A pod of a ServiceAccount that does not exist is refused as kube-apiserver refuses it.
    let o = lab.kubectl(&[
        "-n",
        "team",
        "run",
        "orphan",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"serviceAccountName":"ghost"}}"#,
        "--",
        "sleep",
        "1",
    ]);
    assert!(
        text(&o).contains("error looking up service account team/ghost: serviceaccount \"ghost\" not found"),
        "{}",
        text(&o)
    );
}
