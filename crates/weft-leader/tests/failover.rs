//! Leader election against both APIs weft runs on, from one test: the embedded API server and a
//! real kube-apiserver (from `scripts/peers`). Two candidates: exactly one runs the work at any
//! time; the leader's process stopping hands the work to the other after the lease's duration
//! (not before); a leader that releases hands it over at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use weft_leader::{Config, Elector};

/// Who runs the work now.
type Running = Arc<Mutex<Vec<&'static str>>>;

/// Removes its candidate from [`Running`] when the work is stopped (aborted).
struct Mark(Running, &'static str);

impl Drop for Mark {
    fn drop(&mut self) {
        self.0.lock().unwrap().retain(|r| *r != self.1);
    }
}

fn cfg(id: &str) -> Config {
    Config {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
        ..Config::new("default", "weft-test-failover", id)
    }
}

fn candidate(client: &kube::Client, id: &'static str, running: &Running) -> tokio::task::JoinHandle<()> {
    let elector = Elector::new(client.clone(), cfg(id)).unwrap();
    let running = running.clone();
    tokio::spawn(elector.run(move || {
        let running = running.clone();
        async move {
            running.lock().unwrap().push(id);
            let _mark = Mark(running, id);
            std::future::pending::<()>().await
        }
    }))
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn failover(client: kube::Client) {
    let running: Running = Arc::default();
    let a = candidate(&client, "a", &running);
    wait_for("a leads", Duration::from_secs(10), || running.lock().unwrap().as_slice() == ["a"]).await;
    let b = candidate(&client, "b", &running);
    // For two lease durations, b never runs alongside a.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(running.lock().unwrap().as_slice(), ["a"], "one leader at a time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a's process goes (no release): b takes over once the lease has run out, not before.
    let gone = Instant::now();
    a.abort();
    let _ = a.await;
    // Its work is aborted with it; tokio cancels a task on another worker thread a moment later.
    wait_for("a's work stopped with it", Duration::from_secs(1), || running.lock().unwrap().is_empty()).await;
    wait_for("b takes over", Duration::from_secs(15), || running.lock().unwrap().as_slice() == ["b"]).await;
    let took = gone.elapsed();
    assert!(took >= Duration::from_secs(2), "b took over after {took:?}: before the 3 s lease could run out");
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), "default");
    let spec = leases.get("weft-test-failover").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    b.abort();
    let _ = b.await;

    // A leader that releases: the next candidate takes the lease at its first try after.
    let mut c = Elector::new(client.clone(), cfg("c")).unwrap();
    let mut d = Elector::new(client.clone(), cfg("d")).unwrap();
    wait_for_async(&mut c, Duration::from_secs(10)).await;
    assert!(!d.try_acquire_or_renew().await.unwrap(), "c holds it");
    c.release().await.unwrap();
    assert!(d.try_acquire_or_renew().await.unwrap(), "released: d takes it at once");
    assert!(!c.try_acquire_or_renew().await.unwrap(), "and c cannot take it back while d renews");
}

/// Tries until `e` holds the lease (the last holder's lease may first have to run out).
async fn wait_for_async(e: &mut Elector, within: Duration) {
    let start = Instant::now();
    while !e.try_acquire_or_renew().await.unwrap() {
        assert!(start.elapsed() < within, "did not get the lease within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_the_embedded_api() {
    let dir = tempfile::Builder::new().prefix("weft-leader-").tempdir().unwrap();
    let running = weft_apiserver::start(weft_apiserver::Config {
        name: "leader".into(),
        state_dir: dir.path().to_path_buf(),
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        node_port_range: 30000..=32767,
        port: 0,
        advertise_address: None,
    })
    .await
    .unwrap();
    let client = weft_testkit::kubeconfig::client(&running.kubeconfig).await.unwrap();
    failover(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_a_real_kube_apiserver() {
    let dir = tempfile::Builder::new().prefix("weft-leader-cp-").tempdir().unwrap();
    let spec = weft_controlplane::Spec {
        dir: dir.path().to_path_buf(),
        bin_dir: weft_controlplane::find_bin_dir(&std::env::current_exe().unwrap()).unwrap(),
        name: "leader".into(),
        service_cidr: "10.96.0.0/16".into(),
        node_port_range: "30000-32767".into(),
        advertise: None,
        controllers: None,
        cluster_cidr: None,
        netns: None,
        api_port: 0,
    };
    let cp = weft_controlplane::ControlPlane::start(&spec, Duration::from_secs(120)).await.unwrap();
    failover(cp.client().await.unwrap()).await;
}
