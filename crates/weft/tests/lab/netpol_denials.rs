//! NetworkPolicy denials made visible (issue 13), in a lab with real packets: a connection a
//! policy denies becomes, within seconds, a `PolicyDenied` Event on the pod whose policies
//! denied it (the destination for ingress, the source for egress) naming the other pod, the
//! port and the policies; `weft policy denials` lists it; repeated attempts grow the Event's
//! count instead of making one Event per packet; `weft status` counts the denied packets per
//! node (the daemon's /metrics); `weft describe netpol` lists exactly the pods a policy
//! selects, and what its rules' peers match.
//!
//! The pods: x/a on node-1, x/b and x/c (tier=db) on node-2. Policies: `deny-all` isolates
//! tier=db pods for ingress with no rule; `allow-c` lets x/c reach x/b on TCP 80. So x/a -> x/b
//! is denied on node-2 (ingress of x/b, selected by both policies) and x/c -> x/b passes. Then
//! `a-no-egress` isolates x/a for egress: x/a -> x/c is denied on node-1 (egress of x/a).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_testkit::Lab;
use weft_testkit::probe::{self, Answerer, Job, Outcome, Proto};
use weft_testkit::run::describe_section as section;

const NS: &str = "x";
/// How long a denial may take to show (the first write of a new group is at once, then at
/// most every 10 s).
const SHOW_WITHIN: Duration = Duration::from_secs(20);

struct Pod {
    ip: IpAddr,
    netns: PathBuf,
}

fn pods(lab: &Lab) -> std::collections::BTreeMap<String, Pod> {
    let pod = |name: &str, labels: Value, node: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [
                {"name": "web", "image": "weft/echo", "ports": [{"containerPort": 80, "name": "web"}]}]},
        })
    };
    let docs = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        pod("a", json!({"pod": "a"}), "node-1"),
        pod("b", json!({"pod": "b", "tier": "db"}), "node-2"),
        pod("c", json!({"pod": "c", "tier": "db"}), "node-2"),
    ];
    lab.apply_str(&format!(
        "# denials test objects\n{}",
        docs.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n---\n")
    ));
    lab.wait_running(NS, 3)
        .iter()
        .map(|v| {
            let name = v["metadata"]["name"].as_str().unwrap().to_string();
            let ip = v["status"]["podIP"].as_str().unwrap().parse().unwrap();
            let netns = probe::pod_netns(lab, NS, &name, v["metadata"]["uid"].as_str()).unwrap();
            (name, Pod { ip, netns })
        })
        .collect()
}

fn tcp(pods: &std::collections::BTreeMap<String, Pod>, from: &str, to: &str) -> Outcome {
    probe::probe(&Job {
        netns: pods[from].netns.clone(),
        addr: SocketAddr::new(pods[to].ip, 80),
        proto: Proto::Tcp,
        expect: Some(Answerer::new(NS, to)),
        timeout: Duration::from_secs(1),
    })
}

/// Polls `f` every 250 ms until it gives something or `within` has passed; then fails with
/// what the lab says (its Events, its status, the end of the daemon's log).
fn poll<T>(lab: &Lab, what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > within {
            let events = lab.kubectl(&["get", "events", "-A"]);
            let status = lab.weft(&["status"]);
            let log = std::fs::read_to_string(lab.state_dir().join("weft.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out after {within:?} waiting for {what}\nevents:\n{}\nstatus:\n{}\nlog:\n{}",
                String::from_utf8_lossy(&events.stdout),
                String::from_utf8_lossy(&status.stdout),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The PolicyDenied Events of the namespace.
fn denied_events(lab: &Lab) -> Vec<Value> {
    let out = lab.kubectl_ok(&["get", "events", "-n", NS, "--field-selector", "reason=PolicyDenied", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["items"].as_array().cloned().unwrap_or_default()
}

/// The Events on `pod` whose message has every one of `words`.
fn events_on(lab: &Lab, pod: &str, words: &[&str]) -> Vec<Value> {
    denied_events(lab)
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .filter(|e| e["message"].as_str().is_some_and(|m| words.iter().all(|w| m.contains(w))))
        .collect()
}

#[test]
fn denials_are_events_counted_listed_and_described() {
    let lab = Lab::up(&["--nodes", "2"]);
    let pods = pods(&lab);
    poll(&lab, "x/a to reach x/b before any policy", Duration::from_secs(10), || {
        tcp(&pods, "a", "b").connected().then_some(())
    });
    assert!(denied_events(&lab).is_empty());

    let policy = |name: &str, spec: Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": name, "namespace": NS}, "spec": spec})
        .to_string()
    };
    lab.apply_str(&policy(
        "deny-all",
        json!({"podSelector": {"matchLabels": {"tier": "db"}}, "policyTypes": ["Ingress"], "ingress": []}),
    ));
    lab.apply_str(&policy(
        "allow-c",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}], "ports": [{"port": 80}]}]}),
    ));
    // Both in force on node-2 (x/c gets in, x/a not), then x/a tries again while we look.
    poll(&lab, "allow-c to let x/c reach x/b", Duration::from_secs(10), || {
        tcp(&pods, "c", "b").connected().then_some(())
    });
    poll(&lab, "x/a -> x/b to be denied", Duration::from_secs(10), || (!tcp(&pods, "a", "b").reached()).then_some(()));

    // An Event on the destination pod naming the source, the port and the policies.
    let a_ip = pods["a"].ip.to_string();
    let b_port = format!("{}:80", pods["b"].ip);
    let words = ["denied TCP", "x/a", a_ip.as_str(), b_port.as_str(), "ingress of x/b", "x/allow-c, x/deny-all"];
    let first = poll(&lab, "a PolicyDenied Event on x/b", SHOW_WITHIN, || {
        events_on(&lab, "b", &words).pop().or_else(|| {
            assert!(!tcp(&pods, "a", "b").reached());
            None
        })
    });
    println!("event: {}", first["message"]);
    assert_eq!(first["type"], "Warning");
    assert_eq!(first["source"]["component"], "weft-policy");
    assert_eq!(first["source"]["host"], "node-2");
    assert_eq!(first["related"]["name"], "a");
    let first_count = first["count"].as_i64().unwrap();
    assert!(first_count >= 1);

    // weft policy denials lists it.
    let table = lab.weft_ok(&["policy", "denials", "-n", NS]);
    println!("{table}");
    let header = table.lines().next().unwrap();
    for h in ["LAST SEEN", "DIRECTION", "SOURCE", "DESTINATION", "PROTO/PORT", "COUNT", "POLICIES"] {
        assert!(header.contains(h), "{table}");
    }
    let row = table.lines().find(|l| l.contains("x/a") && l.contains("x/b")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..5], ["ingress", "x/a", "x/b", "TCP/80"], "{table}");
    assert_eq!(cells[6], "x/allow-c,x/deny-all", "{table}");
    assert_eq!(lab.weft_ok(&["policy", "denials", "-A", "--since", "10m"]).lines().count(), table.lines().count());

    // Repeated attempts grow the one Event's count: no Event per packet.
    for _ in 0..5 {
        assert!(!tcp(&pods, "a", "b").reached());
    }
    let grown = poll(&lab, "the Event's count to grow", SHOW_WITHIN, || {
        let evs = events_on(&lab, "b", &["x/a", b_port.as_str()]);
        assert_eq!(evs.len(), 1, "one Event for x/a -> x/b:80, not one per packet: {evs:#?}");
        (evs[0]["count"].as_i64().unwrap() >= first_count + 5).then(|| evs[0].clone())
    });
    assert_eq!(grown["metadata"]["name"], first["metadata"]["name"]);
    assert!(grown["message"].as_str().unwrap().contains(" times in "), "{}", grown["message"]);
    let count = grown["count"].as_i64().unwrap();
    println!("after repeated attempts: count {count}: {}", grown["message"]);

    // weft status counts them on node-2 (the metrics count every logged packet; the Event may
    // lag by its write interval, never lead).
    let status = lab.weft_ok(&["status"]);
    println!("{status}");
    let line =
        status.lines().find(|l| l.starts_with("policy:") && l.contains("node-2")).unwrap_or_else(|| panic!("{status}"));
    let n: i64 = line.split_whitespace().nth(3).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert!(n >= count, "{line}: the Event says {count}");

    // describe lists exactly the selected pods, and what each rule's peers match.
    let d = lab.weft_ok(&["describe", "netpol", "deny-all", "-n", NS]);
    println!("{d}");
    let selected: Vec<String> =
        section(&d, "Selected Pods").iter().map(|l| l.split(' ').next().unwrap().to_string()).collect();
    assert_eq!(selected, ["x/b", "x/c"], "{d}");
    assert!(d.contains("Ingress:                  no rule"), "{d}");
    let d = lab.weft_ok(&["describe", "networkpolicy", "allow-c", "-n", NS]);
    println!("{d}");
    let selected: Vec<String> =
        section(&d, "Selected Pods").iter().map(|l| l.split(' ').next().unwrap().to_string()).collect();
    assert_eq!(selected, ["x/b"], "{d}");
    assert!(d.contains("from pods matching pod=c in namespace x, on TCP port 80"), "{d}");
    assert_eq!(section(&d, "    Pods"), ["x/c"], "{d}");

    // An egress denial: an Event on the source pod, counted on its node.
    lab.apply_str(&policy(
        "a-no-egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": []}),
    ));
    // (x/c's ingress denies x/a too, on node-2, until x/a's egress policy is in force on node-1.)
    let c_port = format!("{}:80", pods["c"].ip);
    let eg = poll(&lab, "a PolicyDenied Event on x/a", SHOW_WITHIN, || {
        assert!(!tcp(&pods, "a", "c").reached());
        events_on(&lab, "a", &["egress of x/a", c_port.as_str(), "x/a-no-egress"]).pop()
    });
    assert_eq!(eg["source"]["host"], "node-1");
    assert_eq!(eg["related"]["name"], "c");
    let status = lab.weft_ok(&["status"]);
    assert!(
        status.lines().any(|l| l.starts_with("policy:") && l.contains("node-1") && !l.contains("egress 0)")),
        "{status}"
    );
    // What the denial recorder said (warnings would name a refused write).
    let log = std::fs::read_to_string(lab.state_dir().join("weft.log")).unwrap_or_default();
    for l in log.lines().filter(|l| l.contains("weft_policy::denials")) {
        println!("log: {l}");
    }
}
