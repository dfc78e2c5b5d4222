//! The kubelet API (what a real kube-apiserver calls for exec, attach, port-forward and logs),
//! over real TLS with curl: only a client certificate from the cluster's CA is served; paths,
//! methods and options are checked, errors come back as plain text as the kubelet writes them.
//! Loopback only.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use weft_apiserver::kubelet_api::{self, KubeletApi};
use weft_apiserver::tls::{self, Use};

/// `curl` with these certificate files (None: no client certificate); (HTTP code, body), or
/// Err with curl's error when no HTTP answer came.
fn curl(url: &str, cert: Option<(&Path, &Path)>, extra: &[&str]) -> Result<(u16, String), String> {
    let mut c = Command::new("curl");
    c.args(["-sk", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"]).args(extra);
    if let Some((crt, key)) = cert {
        c.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    let out = c.arg(url).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    match code.parse::<u16>() {
        Ok(code) if code != 0 => Ok((code, body.to_string())),
        _ => Err(format!("curl exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr))),
    }
}

fn write_pair(dir: &Path, stem: &str, (crt, key): (String, String)) -> (std::path::PathBuf, std::path::PathBuf) {
    let (c, k) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}-key.pem")));
    std::fs::write(&c, crt).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_clusters_clients_are_served_and_requests_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::load_or_create(dir.path(), &["127.0.0.1".to_string()]).unwrap();
    let names = ["127.0.0.1".to_string()];
    let server = tls::signed_by_ca(dir.path(), "kubelet", Use::Server { names: &names }).unwrap();
    let client =
        tls::signed_by_ca(dir.path(), "client", Use::Client { user: "kube-apiserver-kubelet-client", groups: &[] })
            .unwrap();
    // Another cluster's CA and client: refused.
    let other_dir = tempfile::tempdir().unwrap();
    tls::load_or_create(other_dir.path(), &["127.0.0.1".to_string()]).unwrap();
    let stranger = tls::signed_by_ca(other_dir.path(), "client", Use::Client { user: "x", groups: &[] }).unwrap();

    let config = kubelet_api::tls_config(&ca.ca_pem, &server.0, &server.1).unwrap();
    let api = Arc::new(KubeletApi {
        logs: Arc::new(weft_apiserver::pod_logs::NoPodLogs),
        streams: Arc::new(weft_apiserver::streams::NoPodStreams),
        uid_of: Box::new(|ns, pod| (ns == "default" && pod == "web").then(|| "uid-1".to_string())),
        authorize: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(kubelet_api::serve(listener, config, api));

    let ours_files = write_pair(dir.path(), "ours", client);
    let theirs_files = write_pair(dir.path(), "theirs", stranger);
    let checks = tokio::task::spawn_blocking(move || {
        let ours = Some((ours_files.0.as_path(), ours_files.1.as_path()));
        let theirs = Some((theirs_files.0.as_path(), theirs_files.1.as_path()));
        // No certificate, or one from another CA: no HTTP answer at all.
        assert!(curl(&format!("{base}/healthz"), None, &[]).is_err(), "served a client without a certificate");
        assert!(curl(&format!("{base}/healthz"), theirs, &[]).is_err(), "served another cluster's client");
        assert_eq!(curl(&format!("{base}/healthz"), ours, &[]).unwrap(), (200, "ok".to_string()));

        // Paths that are not the kubelet's, and traversal: 404.
        for p in ["/api/v1/pods", "/exec/default/web", "/containerLogs/../../etc/passwd/x", "/exec//web/c"] {
            let (code, _) = curl(&format!("{base}{p}"), ours, &["--path-as-is"]).unwrap();
            assert_eq!(code, 404, "{p}");
        }
        // A pod that does not run here: 404, in plain text.
        let (code, body) = curl(&format!("{base}/containerLogs/default/nope/c"), ours, &[]).unwrap();
        assert_eq!((code, body.as_str()), (404, "pod default/nope does not run on this node"));
        // A log with bad options: 422 naming the field (as the API checks PodLogOptions).
        let (code, body) = curl(&format!("{base}/containerLogs/default/web/c?tailLines=-1"), ours, &[]).unwrap();
        assert_eq!(code, 422, "{body}");
        assert!(body.contains("tailLines"), "{body}");
        // A log read with POST: 405.
        assert_eq!(curl(&format!("{base}/containerLogs/default/web/c"), ours, &["-X", "POST"]).unwrap().0, 405);
        // Exec without an upgrade, or asking for no stream: 400 saying what is missing.
        let (code, body) =
            curl(&format!("{base}/exec/default/web/c?command=ls&output=1"), ours, &["-X", "POST"]).unwrap();
        assert_eq!(code, 400);
        assert!(body.contains("Upgrade request required"), "{body}");
        let (code, body) = curl(&format!("{base}/exec/default/web/c?command=ls"), ours, &["-X", "POST"]).unwrap();
        assert_eq!(code, 400);
        assert!(body.contains("stdin, stdout"), "{body}");
        // A huge header: refused, and the server still answers after.
        let big = format!("X-Big: {}", "a".repeat(1 << 20));
        let _ = curl(&format!("{base}/healthz"), ours, &["-H", &big]);
        assert_eq!(curl(&format!("{base}/healthz"), ours, &[]).unwrap().0, 200);
    });
    checks.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_authorized_as_the_certificate_names_its_user_and_groups() {
    use kubelet_api::Attributes;
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::load_or_create(dir.path(), &["127.0.0.1".to_string()]).unwrap();
    let server = tls::signed_by_ca(dir.path(), "kubelet", Use::Server { names: &["127.0.0.1".to_string()] }).unwrap();
    let admin =
        tls::signed_by_ca(dir.path(), "admin", Use::Client { user: "apiserver", groups: &["system:masters"] }).unwrap();
    let reader = tls::signed_by_ca(dir.path(), "reader", Use::Client { user: "ann", groups: &["readers"] }).unwrap();
    let mallory = tls::signed_by_ca(dir.path(), "mallory", Use::Client { user: "mallory", groups: &[] }).unwrap();
    let broken = tls::signed_by_ca(dir.path(), "broken", Use::Client { user: "broken", groups: &[] }).unwrap();

    // The policy stands in for the API server's: masters may do anything, readers may get,
    // mallory nothing; "broken" gets no answer. Every question asked is recorded.
    let asked: Arc<Mutex<Vec<Attributes>>> = Arc::default();
    let log = asked.clone();
    let authorize: kubelet_api::Authorize = Arc::new(move |a: Attributes| {
        log.lock().unwrap().push(a.clone());
        Box::pin(async move {
            match a.user.as_str() {
                "broken" => Err("no API server".to_string()),
                _ => Ok(a.groups.iter().any(|g| g == "system:masters")
                    || (a.groups.iter().any(|g| g == "readers") && a.verb == "get")),
            }
        })
    });
    let config = kubelet_api::tls_config(&ca.ca_pem, &server.0, &server.1).unwrap();
    let api = Arc::new(KubeletApi {
        logs: Arc::new(weft_apiserver::pod_logs::NoPodLogs),
        streams: Arc::new(weft_apiserver::streams::NoPodStreams),
        uid_of: Box::new(|_, _| None),
        authorize: Some(authorize),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(kubelet_api::serve(listener, config, api));
    let files: Vec<_> = [("admin", admin), ("reader", reader), ("mallory", mallory), ("broken", broken)]
        .into_iter()
        .map(|(n, p)| write_pair(dir.path(), n, p))
        .collect();
    let checks = tokio::task::spawn_blocking(move || {
        let c = |i: usize| Some((files[i].0.as_path(), files[i].1.as_path()));
        let logs = format!("{base}/containerLogs/default/web/c");
        // Allowed: on to the handler (which has no such pod here).
        assert_eq!(curl(&logs, c(0), &[]).unwrap().0, 404);
        assert_eq!(curl(&logs, c(1), &[]).unwrap().0, 404);
        // A reader may not open an exec stream (POST: create).
        let (code, body) =
            curl(&format!("{base}/exec/default/web/c?command=ls&output=1"), c(1), &["-X", "POST"]).unwrap();
        assert_eq!(
            (code, body.as_str()),
            (403, "Forbidden (user=ann, verb=create, resource=nodes, subresource(s)=[proxy])\n")
        );
        // Mallory may do nothing, health checks included; a second try is answered from the cache.
        for _ in 0..2 {
            let (code, body) = curl(&format!("{base}/healthz"), c(2), &[]).unwrap();
            assert_eq!(
                (code, body.as_str()),
                (403, "Forbidden (user=mallory, verb=get, resource=nodes, subresource(s)=[proxy])\n")
            );
        }
        // No answer from the authorizer: 500, never let through.
        let (code, body) = curl(&logs, c(3), &[]).unwrap();
        assert_eq!(code, 500, "{body}");
        assert!(body.starts_with("Authorization error (user=broken"), "{body}");
    });
    checks.await.unwrap();
    let asked = asked.lock().unwrap();
    let seen: Vec<(&str, &[String], &str, &str)> =
        asked.iter().map(|a| (a.user.as_str(), a.groups.as_slice(), a.verb, a.subresource)).collect();
    let masters = ["system:masters".to_string()];
    let readers = ["readers".to_string()];
    assert_eq!(
        seen,
        [
            ("apiserver", &masters[..], "get", "proxy"),
            ("ann", &readers[..], "get", "proxy"),
            ("ann", &readers[..], "create", "proxy"),
            ("mallory", &[][..], "get", "proxy"),
            ("broken", &[][..], "get", "proxy"),
        ],
        "one question per user and verb (the second of mallory's came from the cache)"
    );
}
