//! `kubectl exec`, `attach`, `cp` and `port-forward` against a lab with the real kubectl (under
//! a real pty for `-it`), and kube-rs's `AttachedProcess` and `Portforwarder`: the seeds' own
//! commands, exit codes, stdin, large transfers, hostile input.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weft_testkit::Lab;
use weft_testkit::run::output_bounded;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: busybox}
spec:
  nodeName: node-2
  containers:
  - name: busybox
    image: busybox
    command: [sleep, "100000"]
    env: [{name: GREETING, value: hello-from-env}]
    workingDir: /usr
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: node-1
  containers:
  - {name: nginx, image: nginx, ports: [{containerPort: 80}]}
  - {name: sidecar, image: busybox, command: [sleep, "100000"]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: 80}]
"#;

const LIMIT: Duration = Duration::from_secs(60);

fn kubectl(lab: &Lab, args: &[&str], stdin: Option<&Path>) -> Output {
    // The bounded runner gives commands /dev/null as stdin: a file goes in through the shell.
    let mut c = Command::new("sh");
    c.args(["-c", "exec \"$KUBECTL\" \"$@\" < \"$STDIN_FILE\"", "kubectl", "--kubeconfig"])
        .env("KUBECTL", weft_testkit::lab::kubectl_bin())
        .arg(lab.kubeconfig())
        .args(args)
        .env("STDIN_FILE", stdin.unwrap_or(Path::new("/dev/null")));
    output_bounded(c, LIMIT).expect("kubectl runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// kubectl run under a real terminal (util-linux `script`), so `-it` takes the tty path.
fn kubectl_tty(lab: &Lab, args: &str) -> Output {
    let line = format!("kubectl --kubeconfig {} {args}", lab.kubeconfig().display());
    let mut c = Command::new("script");
    c.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null());
    output_bounded(c, LIMIT).expect("script runs")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `kubectl port-forward`, stopped by pid when dropped.
struct PortForward(std::process::Child);

impl PortForward {
    fn start(lab: &Lab, target: &str, local: u16, remote: u16) -> PortForward {
        Self::start_with(lab, target, local, remote, &[])
    }

    fn start_with(lab: &Lab, target: &str, local: u16, remote: u16, env: &[(&str, &str)]) -> PortForward {
        let child = Command::new(weft_testkit::lab::kubectl_bin())
            .envs(env.iter().copied())
            .arg("--kubeconfig")
            .arg(lab.kubeconfig())
            .args(["port-forward", target, &format!("{local}:{remote}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pf = PortForward(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", local)).is_err() {
            assert!(Instant::now() < deadline, "kubectl port-forward {target} did not listen on {local}");
            std::thread::sleep(Duration::from_millis(100));
        }
        pf
    }

    fn stderr(mut self) -> String {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut s = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP GET through a local port; the builtin echo answers with JSON.
fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: pf\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn kubectl_exec_cp_attach_and_port_forward_against_a_lab() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.apply_str(PODS);
    let pods = lab.wait_running("default", 2);
    let ip_of = |name: &str| {
        pods.iter().find(|p| p["metadata"]["name"] == name).unwrap()["status"]["podIP"].as_str().unwrap().to_string()
    };
    let web_ip = ip_of("web");

    // The seeds' commands, under a real terminal: the pod's resolv.conf with the cluster DNS,
    // names through it, a pod on the other node.
    let o = kubectl_tty(&lab, "exec -it busybox -- cat /etc/resolv.conf");
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("nameserver 10.96.0.10") && t.contains("default.svc.cluster.local"),
        "{t}"
    );
    let o = kubectl_tty(&lab, "exec -it busybox -- nslookup kubernetes.default");
    let t = text(&o);
    assert!(o.status.success() && t.contains("10.96.0.1"), "{t}");
    let o = kubectl_tty(&lab, &format!("exec -it busybox -- ping -c 2 {web_ip}"));
    let t = text(&o);
    assert!(o.status.success() && t.contains("2 received"), "{t}");
    // A real terminal: a tty, TERM, the size kubectl sends in its resize message.
    let o = kubectl_tty(&lab, "exec -it busybox -- sh -c 'tty; echo term=$TERM; stty size'");
    let t = text(&o);
    assert!(t.contains("/dev/pts/") && t.contains("term=xterm"), "{t}");
    let line = format!(
        "stty cols 123 rows 45; kubectl --kubeconfig {} exec -it busybox -- stty size",
        lab.kubeconfig().display()
    );
    let mut c = Command::new("script");
    c.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null());
    let t = text(&output_bounded(c, LIMIT).unwrap());
    assert!(t.contains("45 123"), "the resize message sets the pty's size: {t}");

    // The container's own view: its env, working directory, hostname, the pod's PID namespace
    // (the shim is pid 1), the container's capabilities.
    let out = lab.kubectl_ok(&[
        "exec",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd; hostname; cat /proc/1/comm; grep CapBnd /proc/self/status",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..4], ["hello-from-env", "/usr", "busybox", "weft"], "{out}");
    assert!(lines[4].ends_with("00000000a80425fb"), "containerd's default capabilities: {out}");

    // `weft exec` enters a running pod the same way (its PID namespace: the shim is pid 1).
    assert_eq!(lab.exec_ok(&["busybox"], &["cat", "/proc/1/comm"]).trim(), "weft");
    assert_eq!(lab.exec(&["busybox"], &["sh", "-c", "exit 6"]).status.code(), Some(6));

    // Exit codes as kubectl reports them.
    let o = kubectl(&lab, &["exec", "busybox", "--", "sh", "-c", "exit 3"], None);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("command terminated with exit code 3"), "{}", text(&o));
    let o = kubectl(&lab, &["exec", "busybox", "--", "true"], None);
    assert!(o.status.success(), "{}", text(&o));

    // stdin: piped, and a few MB round-tripped exactly.
    let dir = tempfile::tempdir().unwrap();
    let hello = dir.path().join("hello");
    std::fs::write(&hello, "hello\n").unwrap();
    let o = kubectl(&lab, &["exec", "-i", "busybox", "--", "cat"], Some(&hello));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\n", "{}", text(&o));
    let big = dir.path().join("big.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&big, &data).unwrap();
    let o = kubectl(&lab, &["exec", "-i", "busybox", "--", "sha256sum"], Some(&big));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(&sha256(&big)), "{}", text(&o));
    let o = kubectl(&lab, &["exec", "-i", "busybox", "--", "wc", "-c"], Some(&big));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "3000000", "{}", text(&o));

    // kubectl cp both ways (tar in the pod). Pods see the host's files in a lab: a unique path.
    let remote = dir.path().join("in-pod.bin");
    let back = dir.path().join("back.bin");
    lab.kubectl_ok(&["cp", big.to_str().unwrap(), &format!("busybox:{}", remote.display())]);
    assert_eq!(sha256(&remote), sha256(&big));
    lab.kubectl_ok(&["cp", &format!("busybox:{}", remote.display()), back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // A container of a pod with two: -c picks it; a wrong name is the API's 400.
    let out = lab.kubectl_ok(&["exec", "web", "-c", "sidecar", "--", "cat", "/proc/1/comm"]);
    assert_eq!(out.trim(), "weft");
    let o = kubectl(&lab, &["exec", "busybox", "-c", "nope", "--", "true"], None);
    assert!(!o.status.success() && text(&o).contains("container nope is not valid for pod busybox"), "{}", text(&o));
    let o = kubectl(&lab, &["exec", "nosuchpod", "--", "true"], None);
    assert!(!o.status.success() && text(&o).contains("pods \"nosuchpod\" not found"), "{}", text(&o));
    let o = kubectl(&lab, &["exec", "busybox", "--", "/no/such/program"], None);
    assert!(!o.status.success() && text(&o).contains("/no/such/program"), "{}", text(&o));

    // Port-forward to a pod and to a Service (kubectl resolves it to a pod), bytes checked.
    let port = free_port();
    let pf = PortForward::start(&lab, "pod/web", port, 80);
    for i in 0..3 {
        let r = http_get(port, &format!("/via-pod/{i}"));
        assert!(r.contains("\"pod\":\"web\"") && r.contains(&format!("/via-pod/{i}")), "{r}");
    }
    drop(pf);
    let port = free_port();
    let pf = PortForward::start(&lab, "svc/web", port, 8080);
    let r = http_get(port, "/via-service");
    assert!(r.contains("\"pod\":\"web\"") && r.contains("/via-service"), "{r}");
    drop(pf);
    // kubectl's older way (and its fallback): SPDY/3.1 over a plain HTTP upgrade.
    let port = free_port();
    let pf = PortForward::start_with(&lab, "pod/web", port, 80, &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")]);
    let r = http_get(port, "/via-spdy");
    assert!(r.contains("\"pod\":\"web\"") && r.contains("/via-spdy"), "{r}");
    drop(pf);
    // Exec over SPDY (kubectl before 1.30, and kubectl's fallback): output, exit code, stdin,
    // and a terminal with its size.
    let spdy = |args: &[&str], stdin: Option<&Path>| {
        let mut c = Command::new("sh");
        c.args(["-c", "exec \"$KUBECTL\" \"$@\" < \"$STDIN_FILE\"", "kubectl", "--kubeconfig"])
            .env("KUBECTL", weft_testkit::lab::kubectl_bin())
            .arg(lab.kubeconfig())
            .args(args)
            .env("STDIN_FILE", stdin.unwrap_or(Path::new("/dev/null")))
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
        output_bounded(c, LIMIT).unwrap()
    };
    let o = spdy(&["exec", "busybox", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], None);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(text(&o).contains("err\n") && text(&o).contains("command terminated with exit code 3"), "{}", text(&o));
    let o = spdy(&["exec", "-i", "busybox", "--", "sha256sum"], Some(&big));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(&sha256(&big)), "{}", text(&o));
    let line = format!(
        "stty cols 99 rows 33; KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false kubectl --kubeconfig {} exec -it busybox -- stty size",
        lab.kubeconfig().display()
    );
    let mut c = Command::new("script");
    c.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null());
    let t = text(&output_bounded(c, LIMIT).unwrap());
    assert!(t.contains("33 99"), "a SPDY terminal gets its size: {t}");

    // A port nothing listens on: an error naming the port, at once, not a hang.
    let port = free_port();
    let pf = PortForward::start(&lab, "pod/busybox", port, 81);
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"x");
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "nothing comes back from a closed port");
    assert!(started.elapsed() < Duration::from_secs(5), "a refused port answers at once");
    std::thread::sleep(Duration::from_millis(300));
    let err = pf.stderr();
    assert!(err.contains("error forwarding port 81") && err.contains("refused"), "{err}");

    // Attach: the container's output as it writes it.
    lab.apply_str(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  restartPolicy: Never
  containers:
  - {name: ticker, image: busybox, command: [sh, -c, "sleep 2; i=0; while [ $i -lt 25 ]; do echo tick $i; i=$((i+1)); sleep 0.2; done; exit 4"]}
"#,
    );
    lab.wait_for("the ticker to run", 60, || {
        lab.pods("default").iter().any(|p| p["metadata"]["name"] == "ticker" && p["status"]["phase"] == "Running")
    });
    let o = kubectl(&lab, &["attach", "-i", "ticker"], None);
    assert!(!o.status.success() && text(&o).contains("was not started with stdin"), "{}", text(&o));
    let o = kubectl(&lab, &["attach", "ticker"], None);
    let t = text(&o);
    assert!(t.contains("tick 20") && t.contains("tick 24"), "attach streams the output: {t}");

    // Attach -i to a container with stdin: what the client sends reaches it.
    lab.apply_str(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  restartPolicy: Never
  containers:
  - {name: reader, image: busybox, stdin: true, command: [sh, -c, "read line; echo got-$line; read line; echo and-$line"]}
"#,
    );
    lab.wait_for("the reader to run", 60, || {
        lab.pods("default").iter().any(|p| p["metadata"]["name"] == "reader" && p["status"]["phase"] == "Running")
    });
    let lines = dir.path().join("lines");
    std::fs::write(&lines, "first\nsecond\n").unwrap();
    let o = kubectl(&lab, &["attach", "-i", "reader"], Some(&lines));
    let t = text(&o);
    assert!(t.contains("got-first") && t.contains("and-second"), "attach -i feeds the container's stdin: {t}");

    // The daemon took all of the above and still serves.
    lab.kubectl_ok(&["get", "pods"]);
}

/// Malformed requests and frames: clear errors, and the daemon stays up.
#[test]
fn hostile_stream_requests_get_errors_and_the_daemon_survives() {
    let lab = Lab::up(&["--nodes", "1"]);
    lab.apply_str(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: box}
spec:
  containers: [{name: box, image: busybox, command: [sleep, "100000"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers: [{name: nginx, image: nginx, ports: [{containerPort: 80}]}]
"#,
    );
    lab.wait_running("default", 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures::{SinkExt, StreamExt};
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::{Api, AttachParams};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let client = lab.client().await;
        let pods: Api<Pod> = Api::default_namespaced(client.clone());

        // kube-rs's AttachedProcess: stdout, stdin, the exit status.
        let mut p = pods
            .exec("box", ["sh", "-c", "read x; echo got-$x; exit 5"], &AttachParams::default().stdin(true).stderr(false))
            .await
            .unwrap();
        let mut stdin = p.stdin().unwrap();
        stdin.write_all(b"ping\n").await.unwrap();
        let mut out = String::new();
        p.stdout().unwrap().read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "got-ping\n");
        let status = p.take_status().unwrap().await.unwrap();
        assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(status.details.unwrap().causes.unwrap()[0].message.as_deref(), Some("5"));
        p.join().await.unwrap();

        // kube-rs's Portforwarder: an HTTP request to the pod's echo through it, and an error
        // for a port nothing listens on.
        let mut f = pods.portforward("web", &[80]).await.unwrap();
        let mut s = f.take_stream(80).unwrap();
        s.write_all(b"GET /through-kube-rs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.contains("\"pod\":\"web\"") && answer.contains("/through-kube-rs"), "{answer}");
        drop(s);
        let mut f = pods.portforward("web", &[7999]).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), f.take_error(7999).unwrap()).await.unwrap();
        assert!(err.as_deref().is_some_and(|e| e.contains("7999") && e.contains("refused")), "{err:?}");

        // Raw WebSockets with garbage: a resize that is not JSON, unknown channels, a text frame,
        // an empty binary message; the exec still ends with its status.
        let req = http::Request::get(
            "/api/v1/namespaces/default/pods/box/exec?command=sh&command=-c&command=sleep%200.5%3B%20echo%20done&stdout=true&stdin=true",
        )
        .body(vec![])
        .unwrap();
        let conn = client.connect(req).await.unwrap();
        let mut ws = conn.into_stream();
        use tokio_tungstenite::tungstenite::Message;
        for m in [
            Message::binary(vec![4u8, b'{', b'x']),
            Message::binary(vec![4u8]),
            Message::binary(vec![]),
            Message::binary(vec![9u8, 1, 2, 3]),
            Message::text("hello"),
            Message::binary(vec![255u8]),
            Message::binary(vec![255u8, 77]),
        ] {
            ws.send(m).await.unwrap();
        }
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
            if let Message::Binary(b) = m {
                got.push(b.to_vec());
            }
        }
        assert!(got.iter().any(|b| b.first() == Some(&1) && b.ends_with(b"done\n")), "{got:?}");
        assert!(got.iter().any(|b| b.first() == Some(&3) && String::from_utf8_lossy(b).contains("Success")), "{got:?}");

        // An unknown subprotocol and a missing upgrade: 400s that say what is served (a missing
        // upgrade in kube-apiserver's words, which the embedded API begins with).
        let o = kubectl(&lab, &["get", "--raw", "/api/v1/namespaces/default/pods/box/exec?command=true&stdout=true"], None);
        assert!(text(&o).contains("Upgrade request required"), "{}", text(&o));
    });
    drop(rt);

    // Raw bytes that are not SPDY after a SPDY upgrade, and a SPDY frame that claims 16 MiB.
    let port = std::fs::read_to_string(lab.state_dir().join("api.port")).unwrap().trim().to_string();
    // The admin's token, from the kubeconfig (whichever control plane made it).
    let kubeconfig = std::fs::read_to_string(lab.kubeconfig()).unwrap();
    let token = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("token: ")).unwrap().trim().to_string();
    for garbage in [
        &b"\x80\x03\x00\x01\x00\xff\xff\xffjunk"[..],
        b"not spdy at all",
        b"\x80\x03\x00\x01\x00\x00\x00\x0a\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00",
    ] {
        let line = format!(
            "printf 'POST /api/v1/namespaces/default/pods/box/portforward HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer {token}\\r\\nConnection: Upgrade\\r\\nUpgrade: SPDY/3.1\\r\\nX-Stream-Protocol-Version: portforward.k8s.io\\r\\n\\r\\n'; cat; sleep 1"
        );
        let mut c = Command::new("sh");
        c.args([
            "-c",
            &format!("({line}) | timeout 10 openssl s_client -quiet -connect 127.0.0.1:{port} -alpn http/1.1 2>&1"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(garbage).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(String::from_utf8_lossy(&o.stdout).contains("101 Switching Protocols"), "{}", text(&o));
    }
    // Still serving.
    let out = lab.kubectl_ok(&["exec", "box", "--", "echo", "alive"]);
    assert_eq!(out, "alive\n");

    // A client that goes away mid-exec takes its process with it.
    let mut gone = Command::new(weft_testkit::lab::kubectl_bin())
        .arg("--kubeconfig")
        .arg(lab.kubeconfig())
        .args(["exec", "box", "--", "sleep", "4242"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let in_pod = || lab.exec_ok(&["box"], &["ps", "-eo", "args"]);
    lab.wait_for("the exec'd sleep to run", 20, || in_pod().contains("sleep 4242"));
    gone.kill().unwrap();
    gone.wait().unwrap();
    lab.wait_for("the exec'd sleep to be stopped", 20, || !in_pod().contains("sleep 4242"));

    // A pod no node took: kube-apiserver's 400.
    lab.apply_str(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: nowhere}
spec:
  nodeSelector: {weft-test: no-such-node}
  containers: [{name: c, image: busybox, command: [sleep, "100000"]}]
"#,
    );
    let o = kubectl(&lab, &["exec", "nowhere", "--", "true"], None);
    assert!(!o.status.success() && text(&o).contains("does not have a host assigned"), "{}", text(&o));
    let o = kubectl(&lab, &["port-forward", "pod/nowhere", "1:80"], None);
    assert!(!o.status.success(), "{}", text(&o));
}

/// On a real control plane the kubelet API (port 10250 of each node) is what kube-apiserver
/// calls for exec and logs; any other holder of a certificate from the cluster CA is authorized
/// by a SubjectAccessReview for `nodes/proxy`, as the kubelet's Webhook mode does. (The embedded
/// API serves exec and logs itself: there is no kubelet API to test.)
#[test]
fn the_kubelet_api_asks_the_api_server_who_may_do_what() {
    if weft_testkit::lab::control_plane() != "kubernetes" {
        eprintln!("no kubelet API on the embedded control plane; run with WEFT_TEST_CONTROL_PLANE=kubernetes");
        return;
    }
    let lab = Lab::up(&[]);
    lab.apply_str(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  nodeSelector: {kubernetes.io/hostname: node-1}
  containers:
  - {name: c, image: busybox, command: [sh, -c, "echo kubelet-says-hi; exec sleep 100000"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-proxy-reader}
rules: [{apiGroups: [""], resources: [nodes/proxy], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ops-read-node-proxy}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-proxy-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: ops}]
"#,
    );
    lab.wait_running("default", 1);
    lab.wait_for("talker's log", 30, || {
        String::from_utf8_lossy(&lab.kubectl(&["logs", "talker"]).stdout).contains("kubelet-says-hi")
    });
    let node_ip = lab.kubectl_ok(&[
        "get",
        "node",
        "node-1",
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    let cp = lab.state_dir().join("control-plane");
    let cert = |stem: &str, user: &str, groups: &[&str]| {
        weft_apiserver::tls::signed_by_ca(&cp, stem, weft_apiserver::tls::Use::Client { user, groups }).unwrap();
        (cp.join(format!("{stem}.crt")), cp.join(format!("{stem}.key")))
    };
    let url = format!("https://{}:10250/containerLogs/default/talker/c", node_ip.trim());
    let ask = |(crt, key): &(std::path::PathBuf, std::path::PathBuf), method: &str| {
        let o = Command::new("ip")
            .args(["netns", "exec", &format!("weft-{}-node-1", lab.name), "curl", "-sk", "--max-time", "10"])
            .args(["-X", method, "-w", "\n%{http_code}", "--cert"])
            .arg(crt)
            .arg("--key")
            .arg(key)
            .arg(&url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (code.to_string(), body.to_string())
    };
    // In the bound group: the log. Outside it: the kubelet's 403, for reading and for more.
    let ops = cert("test-ops", "olga", &["ops"]);
    let (code, body) = ask(&ops, "GET");
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("kubelet-says-hi"), "{body}");
    let mallory = cert("test-mallory", "mallory", &["system:authenticated"]);
    let (code, body) = ask(&mallory, "GET");
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("403", "Forbidden (user=mallory, verb=get, resource=nodes, subresource(s)=[proxy])\n")
    );
    let (code, body) = ask(&ops, "POST");
    assert_eq!(code, "403", "olga may get, not create: {body}");
    // kube-apiserver itself is still let through: kubectl logs and exec work.
    assert!(lab.kubectl_ok(&["logs", "talker"]).contains("kubelet-says-hi"));
    assert_eq!(lab.kubectl_ok(&["exec", "talker", "--", "echo", "in"]).trim(), "in");
}
