//! chaos-bench: writes through `kill -9` of the lab daemon, then checks that nothing was lost,
//! that every node's nftables state is a fresh compile of the API's state, and that nothing leaked.
//!
//! It brings up a throwaway lab of its own (`weft-chaos-<pid>`, its own `$WEFT_HOME`), runs
//! client tasks (kube-rs) that create, update (merge patch) and delete Services, Deployments and
//! Pods, each on objects of its own, and records every write the API acknowledged. Meanwhile, at
//! random moments (a seeded RNG: the seed is printed and `--seed` replays the same choices), it
//! kills the lab daemon with SIGKILL and resumes the lab with `weft up`. A request that was sent
//! and got no answer is an unknown outcome ("maybe"): the object may be in either state, and
//! the next read of it must show one of the two. A request that never reached the server
//! (connection refused) is retried.
//!
//! At the end: (1) every acknowledged write is there (the last acknowledged content of the
//! fields written, a resourceVersion not older than the acknowledged one; acknowledged deletes
//! gone); (2) every node's `ip weft-proxy` table holds exactly the elements of a fresh compile
//! of the API's Services and EndpointSlices (`weft_proxy::compile`), waiting up to 30 s; (3)
//! the pod namespaces and pod addresses are the API's pods', no dependent outlives its owner,
//! and after `weft down` no namespace or process of the lab remains.
//!
//! Usage: chaos-bench [SECS=60] [--seed N] [--nodes 2|3] [--ops N] [--clients N]
//!                    [--kill-every MIN-MAX seconds, default 2-8]
//! (needs root; exits 1 if anything was lost, differs or leaked)

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::{Value, json};
use weft_proxy::compile::{Flat, NodeInfo, compile};
use weft_testkit::{Lab, LabOptions, run_bounded};

/// No single request waits longer than this for its answer (then its outcome is unknown).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts of a request that did not reach the server (connection refused), 100 ms apart.
const MAX_NOT_SENT_RETRIES: u32 = 1200;
/// How long the checks wait for the lab to converge before they call a difference.
const CONVERGE: Duration = Duration::from_secs(30);
/// How long `weft up` may take to resume the lab.
const UP_TIMEOUT: Duration = Duration::from_secs(120);
const NS: &str = "default";

// ---------------------------------------------------------------------------------------------
// Arguments, RNG

struct Args {
    secs: u64,
    seed: u64,
    nodes: u32,
    max_ops: u64,
    clients: usize,
    kill_min: f64,
    kill_max: f64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        secs: 60,
        seed: {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
        },
        nodes: 2,
        max_ops: 20_000,
        clients: 3,
        kill_min: 2.0,
        kill_max: 8.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |what: &str| it.next().with_context(|| format!("{what} needs a value"));
        match arg.as_str() {
            "--seed" => a.seed = val("--seed")?.parse().context("--seed N")?,
            "--nodes" => a.nodes = val("--nodes")?.parse().context("--nodes K")?,
            "--ops" => a.max_ops = val("--ops")?.parse().context("--ops N")?,
            "--clients" => a.clients = val("--clients")?.parse().context("--clients N")?,
            "--kill-every" => {
                let v = val("--kill-every")?;
                let (x, y) = v.split_once('-').context("--kill-every MIN-MAX (seconds), e.g. 2-8")?;
                (a.kill_min, a.kill_max) = (x.parse()?, y.parse()?);
            }
            "-h" | "--help" => {
                println!(
                    "chaos-bench [SECS=60] [--seed N] [--nodes 2|3] [--ops N] [--clients N] [--kill-every MIN-MAX]"
                );
                std::process::exit(0);
            }
            s if !s.starts_with('-') => a.secs = s.parse().context("SECS: the run's length in seconds")?,
            s => bail!("unknown argument {s:?} (try --help)"),
        }
    }
    if !(1..=10).contains(&a.nodes) || !(1..=16).contains(&a.clients) || a.secs == 0 || a.secs > 3600 {
        bail!("out of range: --nodes 1..10, --clients 1..16, SECS 1..3600");
    }
    if !(a.kill_min > 0.0 && a.kill_max >= a.kill_min) {
        bail!("--kill-every MIN-MAX needs 0 < MIN <= MAX");
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// The lab is weft_testkit::Lab: brought down on drop (also on error and panic), with whatever
// `weft down` left stopped by pid and the lab's namespaces removed.

/// A client of the lab's API whose requests give up rather than hang while the daemon is down.
async fn lab_client(lab: &Lab) -> Result<kube::Client> {
    let mut cfg = weft_testkit::kubeconfig::config(&lab.kubeconfig()).await?;
    cfg.connect_timeout = Some(Duration::from_secs(5));
    cfg.read_timeout = Some(REQUEST_TIMEOUT);
    cfg.write_timeout = Some(REQUEST_TIMEOUT);
    Ok(kube::Client::try_from(cfg)?)
}

// ---------------------------------------------------------------------------------------------
// What the clients write and what they know

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Service,
    Deployment,
    Pod,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
            Kind::Pod => ApiResource::erase::<Pod>(&()),
        }
    }
    fn short(self) -> &'static str {
        match self {
            Kind::Service => "svc",
            Kind::Deployment => "deploy",
            Kind::Pod => "pod",
        }
    }
}

/// The fields a client writes: an annotation `chaos/gen` (unique per write) and one field per
/// kind (a Service's first port, a Deployment's replicas; nothing more for a Pod).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Content {
    generation: u64,
    field: i64,
}

fn content_of(kind: Kind, o: &DynamicObject) -> Option<Content> {
    let generation = o.metadata.annotations.as_ref()?.get("chaos/gen")?.parse().ok()?;
    let field = match kind {
        Kind::Service => o.data.pointer("/spec/ports/0/port")?.as_i64()?,
        Kind::Deployment => o.data.pointer("/spec/replicas")?.as_i64()?,
        Kind::Pod => 0,
    };
    Some(Content { generation, field })
}

fn rv_of(o: &DynamicObject) -> u64 {
    o.metadata.resource_version.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// The label that Services select: pods of a client's slot group (bare Pods and Deployments' pods).
fn app_label(client: usize, slot: usize) -> String {
    format!("chaos-c{client}-a{}", slot % 3)
}

fn service_ports(port: i64, udp: bool) -> Value {
    let mut ports = vec![json!({"name": "t", "port": port, "targetPort": 8080, "protocol": "TCP"})];
    if udp {
        ports.push(json!({"name": "u", "port": port + 1, "targetPort": 5353, "protocol": "UDP"}));
    }
    Value::Array(ports)
}

fn manifest(kind: Kind, name: &str, client: usize, slot: usize, c: Content) -> Result<DynamicObject> {
    let meta = json!({"name": name, "namespace": NS, "labels": {"chaos": "1"},
        "annotations": {"chaos/gen": c.generation.to_string()}});
    let v = match kind {
        Kind::Service => json!({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "type": if slot.is_multiple_of(3) { "NodePort" } else { "ClusterIP" },
            "selector": {"chaos-app": app_label(client, slot)},
            "ports": service_ports(c.field, slot % 2 == 1)}}),
        Kind::Deployment => json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": c.field,
            "selector": {"matchLabels": {"chaos-dep": name}},
            "template": {"metadata": {"labels": {"chaos-dep": name, "chaos-app": app_label(client, slot)}},
                "spec": {"terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}}}}),
        Kind::Pod => {
            let mut meta = meta;
            meta["labels"]["chaos-app"] = json!(app_label(client, slot));
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}})
        }
    };
    Ok(serde_json::from_value(v)?)
}

fn patch_body(kind: Kind, slot: usize, c: Content) -> Value {
    let meta = json!({"annotations": {"chaos/gen": c.generation.to_string()}});
    match kind {
        Kind::Service => json!({"metadata": meta, "spec": {"ports": service_ports(c.field, slot % 2 == 1)}}),
        Kind::Deployment => json!({"metadata": meta, "spec": {"replicas": c.field}}),
        Kind::Pod => json!({"metadata": meta}),
    }
}

/// What a client knows of one of its objects.
#[derive(Clone, Debug)]
enum Known {
    /// Its state is certain: present with this content (acknowledged or read at `rv`), or absent.
    Sure { obj: Option<Content>, rv: u64 },
    /// A write's outcome is unknown: the object is in one of these two states.
    Maybe { before: Option<Content>, before_rv: u64, after: Option<Content>, at: f64, what: String },
}

struct Slot {
    kind: Kind,
    name: String,
    index: usize,
    known: Known,
    /// The last acknowledged write: (seconds since start, what, resourceVersion).
    last_ack: Option<(f64, String, u64)>,
}

/// Shared figures and findings.
struct Ctx {
    start: Instant,
    /// Clients start no new operation after this.
    deadline: Instant,
    /// Nothing is retried after this.
    hard_deadline: Instant,
    ops: AtomicU64,
    max_ops: u64,
    acked: AtomicU64,
    maybe: AtomicU64,
    not_sent: AtomicU64,
    refused: AtomicU64,
    /// Objects found lost (or resurrected) while running, with the story.
    lost: Mutex<Vec<String>>,
    /// Other surprises (a write refused that should not have been).
    odd: Mutex<Vec<String>>,
    kills: Mutex<Vec<f64>>,
    daemon_down: AtomicBool,
    /// (revision, seconds since start) of every acknowledged write: a clock for revisions.
    marks: Mutex<Vec<(u64, f64)>>,
    /// The run's start on the wall clock (Unix seconds), to place processes' start times.
    start_unix: f64,
}

fn uid_of(o: &DynamicObject) -> String {
    o.metadata.uid.clone().unwrap_or_default()
}

impl Ctx {
    /// A write the API answered with an error the run did not expect: counted and listed.
    fn refused(&self, s: &Slot, what: &str, why: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.odd.lock().unwrap().push(format!("{} {}: {what} refused: {why}", s.kind.short(), s.name));
    }
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    fn mark(&self, rv: u64, t: f64) {
        self.marks.lock().unwrap().push((rv, t));
    }
    /// When revision `rv` was written, from the acknowledged writes around it.
    fn time_of(&self, rv: u64) -> String {
        let marks = self.marks.lock().unwrap();
        let before = marks.iter().filter(|m| m.0 <= rv).map(|m| m.1).fold(f64::NAN, f64::max);
        let after = marks.iter().filter(|m| m.0 >= rv).map(|m| m.1).fold(f64::NAN, f64::min);
        match (before.is_nan(), after.is_nan()) {
            (false, false) => format!("t={:.2}-{:.2}s", before.min(after), before.max(after)),
            (false, true) => format!("after t={before:.2}s"),
            (true, false) => format!("before t={after:.2}s"),
            (true, true) => "t=?".into(),
        }
    }
    fn time_near(&self, rv: u64) -> Option<f64> {
        let marks = self.marks.lock().unwrap();
        let t = marks.iter().filter(|m| m.0 <= rv).map(|m| m.1).fold(f64::NAN, f64::max);
        (!t.is_nan()).then_some(t)
    }
    fn kills_near(&self, t: f64, within: f64) -> String {
        let k: Vec<String> = self
            .kills
            .lock()
            .unwrap()
            .iter()
            .filter(|k| (**k - t).abs() <= within)
            .map(|k| format!("t={k:.2}s"))
            .collect();
        if k.is_empty() { format!("none within {within} s") } else { k.join(", ") }
    }
    fn last_kill_before(&self, t: f64) -> String {
        match self.kills.lock().unwrap().iter().rev().find(|k| **k <= t) {
            Some(k) => format!("last kill before it at t={k:.2}s"),
            None => "no kill before it".into(),
        }
    }
}

enum Res<T> {
    Done(T),
    /// The server answered with an error (nothing was written).
    Refused(u16, String),
    /// Sent, and no answer: it may or may not have been applied.
    Maybe(String),
    /// It never reached the server (every attempt refused until the hard deadline).
    NotSent,
}

/// Did this request never reach the server (the connection was refused or never made)?
fn not_sent(e: &kube::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        // hyper-util's legacy client: the connector (TCP, then TLS) failed; no request was written.
        if err.to_string().starts_with("client error (Connect)") {
            return true;
        }
        cur = err.source();
    }
    false
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// One request: retried while it cannot reach the server; its outcome classified.
async fn call<T, F, Fut>(ctx: &Ctx, mut f: F) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    for _ in 0..MAX_NOT_SENT_RETRIES {
        if Instant::now() > ctx.hard_deadline {
            break;
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, f()).await {
            Err(_) => return Res::Maybe(format!("no answer within {REQUEST_TIMEOUT:?}")),
            Ok(Ok(v)) => return Res::Done(v),
            Ok(Err(kube::Error::Api(s))) if s.code == 429 => {}
            // A server error says nothing certain about whether the write happened.
            Ok(Err(kube::Error::Api(s))) if s.code >= 500 => return Res::Maybe(format!("{} {}", s.code, s.message)),
            Ok(Err(kube::Error::Api(s))) => return Res::Refused(s.code, format!("{} {}", s.code, s.message)),
            Ok(Err(e)) if not_sent(&e) => {
                ctx.not_sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => return Res::Maybe(chain(&e)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Res::NotSent
}

/// Reads an object, retried (a read changes nothing) until it answers or the hard deadline.
async fn read(ctx: &Ctx, api: &Api<DynamicObject>, kind: Kind, name: &str) -> Option<(Option<Content>, u64)> {
    for _ in 0..100 {
        match call(ctx, || api.get_opt(name)).await {
            Res::Done(Some(o)) => return Some((content_of(kind, &o), rv_of(&o))),
            Res::Done(None) => return Some((None, 0)),
            Res::NotSent => return None,
            Res::Refused(..) | Res::Maybe(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        if Instant::now() > ctx.hard_deadline {
            break;
        }
    }
    None
}

fn describe(c: &Option<Content>) -> String {
    match c {
        None => "absent".into(),
        Some(c) => format!("gen {} field {}", c.generation, c.field),
    }
}

/// Settles a slot whose last write had an unknown outcome: the object must be in one of the two
/// states; anything else is a loss.
async fn resolve(ctx: &Ctx, api: &Api<DynamicObject>, s: &mut Slot) {
    let Known::Maybe { before, before_rv, after, at, what } = s.known.clone() else { return };
    let Some((now, rv)) = read(ctx, api, s.kind, &s.name).await else { return };
    if now == after || (now == before && (now.is_none() || rv >= before_rv)) {
        s.known = Known::Sure { obj: now, rv };
        return;
    }
    ctx.lost.lock().unwrap().push(format!(
        "{} {}: after a write of unknown outcome at t={at:.2}s ({what}), read at t={:.2}s shows {} (rv {rv}); \
         expected {} (rv >= {before_rv}) or {}; last acknowledged write: {}; {}",
        s.kind.short(),
        s.name,
        ctx.t(),
        describe(&now),
        describe(&before),
        describe(&after),
        ack_story(s),
        ctx.last_kill_before(at)
    ));
    s.known = Known::Sure { obj: now, rv };
}

fn ack_story(s: &Slot) -> String {
    match &s.last_ack {
        Some((t, what, rv)) => format!("{what} at t={t:.2}s (rv {rv})"),
        None => "none".into(),
    }
}

/// A write answered with an error our record says cannot happen (409 on create of an object we
/// know absent, 404 on one we know present): an acknowledged write was lost.
async fn surprise(ctx: &Ctx, api: &Api<DynamicObject>, s: &mut Slot, op: &str, why: &str) {
    let Known::Sure { obj, rv } = s.known.clone() else { return };
    let t = ctx.t();
    let now = read(ctx, api, s.kind, &s.name).await;
    ctx.lost.lock().unwrap().push(format!(
        "{} {}: {op} at t={t:.2}s answered {why}, but it was known {} (rv {rv}); read now: {}; \
         last acknowledged write: {}; {}",
        s.kind.short(),
        s.name,
        describe(&obj),
        now.map(|(c, rv)| format!("{} (rv {rv})", describe(&c))).unwrap_or("no answer".into()),
        ack_story(s),
        ctx.last_kill_before(t)
    ));
    if let Some((c, rv)) = now {
        s.known = Known::Sure { obj: c, rv };
    }
}

struct Apis {
    svc: Api<DynamicObject>,
    deploy: Api<DynamicObject>,
    pod: Api<DynamicObject>,
}

impl Apis {
    fn new(client: &kube::Client) -> Apis {
        let api = |k: Kind| Api::namespaced_with(client.clone(), NS, &k.resource());
        Apis { svc: api(Kind::Service), deploy: api(Kind::Deployment), pod: api(Kind::Pod) }
    }
    fn of(&self, k: Kind) -> &Api<DynamicObject> {
        match k {
            Kind::Service => &self.svc,
            Kind::Deployment => &self.deploy,
            Kind::Pod => &self.pod,
        }
    }
}

const SLOTS: [(Kind, usize); 3] = [(Kind::Service, 4), (Kind::Deployment, 2), (Kind::Pod, 3)];

async fn client_task(idx: usize, seed: u64, client: kube::Client, ctx: Arc<Ctx>) -> Vec<Slot> {
    let apis = Apis::new(&client);
    let mut rng = weft_bench::SplitMix(seed ^ (0xC11E_0000 + idx as u64));
    let mut slots: Vec<Slot> = vec![];
    for (kind, n) in SLOTS {
        for i in 0..n {
            slots.push(Slot {
                kind,
                name: format!("chaos-c{idx}-{}-{i}", kind.short()),
                index: i,
                known: Known::Sure { obj: None, rv: 0 },
                last_ack: None,
            });
        }
    }
    let mut generation = 0u64;
    while Instant::now() < ctx.deadline && ctx.ops.fetch_add(1, Ordering::Relaxed) < ctx.max_ops {
        let pick = rng.below(slots.len() as u64) as usize;
        let s = &mut slots[pick];
        let api = apis.of(s.kind);
        let (obj, rv) = match &s.known {
            Known::Maybe { .. } => {
                resolve(&ctx, api, s).await;
                continue;
            }
            Known::Sure { obj, rv } => (*obj, *rv),
        };
        generation += 1;
        let kind = s.kind;
        let field = |rng: &mut weft_bench::SplitMix| match kind {
            Kind::Service => 1000 + rng.below(8000) as i64,
            Kind::Deployment => rng.below(3) as i64,
            Kind::Pod => 0,
        };
        let t = ctx.t();
        match obj {
            None => {
                let c = Content { generation, field: field(&mut rng) };
                let m = match manifest(s.kind, &s.name, idx, s.index, c) {
                    Ok(m) => m,
                    Err(e) => {
                        ctx.odd.lock().unwrap().push(format!("manifest: {e}"));
                        break;
                    }
                };
                let what = format!("create ({})", describe(&Some(c)));
                let pp = PostParams::default();
                match call(&ctx, || api.create(&pp, &m)).await {
                    Res::Done(o) => {
                        ctx.acked.fetch_add(1, Ordering::Relaxed);
                        let rv = rv_of(&o);
                        ctx.mark(rv, ctx.t());
                        s.last_ack = Some((t, what, rv));
                        s.known = Known::Sure { obj: Some(c), rv };
                    }
                    Res::Refused(409, why) => surprise(&ctx, api, s, &what, &why).await,
                    Res::Refused(_, why) => {
                        ctx.refused(s, &what, &why);
                    }
                    Res::Maybe(why) => {
                        ctx.maybe.fetch_add(1, Ordering::Relaxed);
                        s.known = Known::Maybe { before: None, before_rv: rv, after: Some(c), at: t, what: why };
                    }
                    Res::NotSent => break,
                }
            }
            Some(old) if rng.unit() < 0.65 => {
                let c = Content { generation, field: if s.kind == Kind::Pod { 0 } else { field(&mut rng) } };
                let body = patch_body(s.kind, s.index, c);
                let what = format!("update ({})", describe(&Some(c)));
                let (pp, patch) = (PatchParams::default(), Patch::Merge(&body));
                match call(&ctx, || api.patch(&s.name, &pp, &patch)).await {
                    Res::Done(o) => {
                        ctx.acked.fetch_add(1, Ordering::Relaxed);
                        let rv = rv_of(&o);
                        if content_of(s.kind, &o) != Some(c) {
                            ctx.odd.lock().unwrap().push(format!(
                                "{} {}: {what} answered with {}",
                                s.kind.short(),
                                s.name,
                                describe(&content_of(s.kind, &o))
                            ));
                        }
                        ctx.mark(rv, ctx.t());
                        s.last_ack = Some((t, what, rv));
                        s.known = Known::Sure { obj: Some(c), rv };
                    }
                    Res::Refused(404, why) => surprise(&ctx, api, s, &what, &why).await,
                    Res::Refused(_, why) => {
                        ctx.refused(s, &what, &why);
                    }
                    Res::Maybe(why) => {
                        ctx.maybe.fetch_add(1, Ordering::Relaxed);
                        s.known = Known::Maybe { before: Some(old), before_rv: rv, after: Some(c), at: t, what: why };
                    }
                    Res::NotSent => break,
                }
            }
            Some(old) => {
                let what = "delete".to_string();
                let dp = DeleteParams::default();
                match call(&ctx, || api.delete(&s.name, &dp)).await {
                    Res::Done(gone) => {
                        ctx.acked.fetch_add(1, Ordering::Relaxed);
                        // The deleted object comes back with the deletion's revision.
                        let del_rv = gone.as_ref().left().map(rv_of).unwrap_or(0);
                        ctx.mark(del_rv, ctx.t());
                        s.last_ack = Some((t, what, del_rv));
                        s.known = Known::Sure { obj: None, rv: 0 };
                    }
                    Res::Refused(404, why) => surprise(&ctx, api, s, &what, &why).await,
                    Res::Refused(_, why) => {
                        ctx.refused(s, &what, &why);
                    }
                    Res::Maybe(why) => {
                        ctx.maybe.fetch_add(1, Ordering::Relaxed);
                        s.known = Known::Maybe { before: Some(old), before_rv: rv, after: None, at: t, what: why };
                    }
                    Res::NotSent => break,
                }
            }
        }
        // Pacing: a few writes per second per client, so the lab's pods keep up.
        let pause = if ctx.daemon_down.load(Ordering::Relaxed) { 50 } else { 30 + rng.below(120) };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    slots
}

// ---------------------------------------------------------------------------------------------
// The killer

/// Is `pid` this lab's daemon (so we never signal anything else)?
fn is_lab_daemon(pid: i32, lab: &str) -> bool {
    let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<String> = c.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    args.iter().any(|a| a == "daemon") && args.iter().any(|a| a == lab)
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

struct Restarts {
    survived: u64,
    failed: Vec<String>,
    daemon_pids: Vec<i32>,
    down_time: Duration,
    up_times: Vec<Duration>,
}

async fn killer(lab: Arc<Lab>, seed: u64, a: (f64, f64), ctx: Arc<Ctx>) -> Restarts {
    let mut rng = weft_bench::SplitMix(seed ^ 0xDEAD_BEEF);
    let mut r =
        Restarts { survived: 0, failed: vec![], daemon_pids: vec![], down_time: Duration::ZERO, up_times: vec![] };
    if let Some(p) = lab.try_daemon_pid() {
        r.daemon_pids.push(p);
    }
    // At most one kill per `kill_min` seconds of the run: bounded in count as in time.
    let max_kills = (ctx.deadline - ctx.start).as_secs_f64() / a.0 + 1.0;
    while (r.survived as f64) < max_kills {
        let wait = Duration::from_secs_f64(a.0 + rng.unit() * (a.1 - a.0));
        if Instant::now() + wait >= ctx.deadline {
            break;
        }
        tokio::time::sleep(wait).await;
        let pid = match lab.try_daemon_pid() {
            Some(p) if is_lab_daemon(p, &lab.name) => p,
            other => {
                r.failed.push(format!("t={:.2}s: no daemon of the lab to kill ({other:?})", ctx.t()));
                break;
            }
        };
        let t = ctx.t();
        let down_at = Instant::now();
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL) {
            r.failed.push(format!("t={t:.2}s: kill -9 {pid}: {e}"));
            break;
        }
        ctx.daemon_down.store(true, Ordering::Relaxed);
        ctx.kills.lock().unwrap().push(t);
        for _ in 0..500 {
            if gone(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stay down a moment (0-1.5 s), so clients meet refused connections.
        tokio::time::sleep(Duration::from_secs_f64(rng.unit() * 1.5)).await;
        let up_start = Instant::now();
        let l2 = lab.clone();
        let up = tokio::task::spawn_blocking(move || l2.weft_run(&["up"], UP_TIMEOUT)).await;
        match up {
            Ok(Ok(_)) => {
                r.survived += 1;
                r.up_times.push(up_start.elapsed());
                if let Some(p) = lab.try_daemon_pid() {
                    r.daemon_pids.push(p);
                }
            }
            Ok(Err(e)) => {
                r.failed.push(format!("t={:.2}s: weft up after the kill at t={t:.2}s failed: {e:#}", ctx.t()));
                ctx.daemon_down.store(false, Ordering::Relaxed);
                break;
            }
            Err(e) => {
                r.failed.push(format!("weft up: {e}"));
                break;
            }
        }
        r.down_time += down_at.elapsed();
        ctx.daemon_down.store(false, Ordering::Relaxed);
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Check 1: every acknowledged write is there

async fn check_writes(client: &kube::Client, slots: &[Slot], ctx: &Ctx) -> Result<(usize, Vec<String>)> {
    let apis = Apis::new(client);
    let mut now: HashMap<(Kind, String), DynamicObject> = HashMap::new();
    for (kind, _) in SLOTS {
        let lp = ListParams::default();
        let list = match call(ctx, || apis.of(kind).list(&lp)).await {
            Res::Done(l) => l,
            _ => bail!("listing {:?} failed", kind),
        };
        for o in list.items {
            if let Some(n) = o.metadata.name.clone() {
                now.insert((kind, n), o);
            }
        }
    }
    let mut lost = vec![];
    let mut checked = 0;
    for s in slots {
        let o = now.get(&(s.kind, s.name.clone()));
        let (got, rv) = (o.and_then(|o| content_of(s.kind, o)), o.map(rv_of).unwrap_or(0));
        let got = if o.is_some() && got.is_none() { Some(Content { generation: u64::MAX, field: -1 }) } else { got };
        checked += 1;
        let ok = match &s.known {
            Known::Sure { obj, rv: want_rv } => got == *obj && (obj.is_none() || rv >= *want_rv),
            Known::Maybe { before, after, before_rv, .. } => {
                got == *after || (got == *before && (before.is_none() || rv >= *before_rv))
            }
        };
        if !ok {
            let want = match &s.known {
                Known::Sure { obj, rv } => format!("{} (rv >= {rv})", describe(obj)),
                Known::Maybe { before, after, at, .. } => {
                    format!("{} or {} (unknown outcome at t={at:.2}s)", describe(before), describe(after))
                }
            };
            let t = s.last_ack.as_ref().map(|a| a.0).unwrap_or(0.0);
            lost.push(format!(
                "{} {}: at the end {} (rv {rv}), expected {want}; last acknowledged write: {}; {}",
                s.kind.short(),
                s.name,
                describe(&got),
                ack_story(s),
                ctx.last_kill_before(t)
            ));
        }
    }
    Ok((checked, lost))
}

// ---------------------------------------------------------------------------------------------
// Check 2: every node's nftables elements are a fresh compile of the API's state

const PROXY_SETS: &[&str] = &[
    "services",
    "nodeports",
    "backends-tcp",
    "backends-udp",
    "backends-sctp",
    "np-backends-tcp",
    "np-backends-udp",
    "np-backends-sctp",
    "hairpin",
    "no-endpoints",
    "no-endpoint-nodeports",
];

fn proto_name(p: &str) -> String {
    match p {
        "6" => "tcp".into(),
        "17" => "udp".into(),
        "132" => "sctp".into(),
        p => p.to_lowercase(),
    }
}

fn render(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => proto_name(s),
        Value::Object(o) => {
            if let Some(Value::Array(parts)) = o.get("concat") {
                parts.iter().map(render).collect::<Vec<_>>().join(" . ")
            } else if let Some(e) = o.get("elem") {
                render(e.get("val").unwrap_or(e))
            } else if let Some((verdict, target)) =
                ["goto", "jump"].iter().find_map(|k| o.get(*k).map(|t| (*k, t["target"].as_str().unwrap_or(""))))
            {
                format!("{verdict} {target}")
            } else {
                v.to_string()
            }
        }
        v => v.to_string(),
    }
}

/// The elements of the proxy's maps and sets in a node's namespace, as "set: key [: value]".
fn kernel_elements(netns: &str) -> Result<BTreeSet<String>> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "nft", "-j", "list", "table", "ip", "weft-proxy"]);
    let out = run_bounded(cmd, Duration::from_secs(20))?;
    let v: Value = serde_json::from_str(&out).context("nft -j output")?;
    let mut els = BTreeSet::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let (obj, is_map) = match (item.get("map"), item.get("set")) {
            (Some(m), _) => (m, true),
            (_, Some(s)) => (s, false),
            _ => continue,
        };
        let name = obj["name"].as_str().unwrap_or("");
        if !PROXY_SETS.contains(&name) {
            continue;
        }
        for e in obj["elem"].as_array().into_iter().flatten() {
            let s = match (is_map, e.as_array()) {
                (true, Some(kv)) if kv.len() == 2 => format!("{name}: {} : {}", render(&kv[0]), render(&kv[1])),
                _ => format!("{name}: {}", render(e)),
            };
            els.insert(s);
        }
    }
    Ok(els)
}

fn compiled_elements(f: &Flat) -> BTreeSet<String> {
    let mut els = BTreeSet::new();
    for ((ip, p, port), chain) in &f.services {
        els.insert(format!("services: {ip} . {p} . {port} : goto {chain}"));
    }
    for ((p, port), chain) in &f.nodeports {
        els.insert(format!("nodeports: {p} . {port} : goto {chain}"));
    }
    for (((ip, p, port), slot), b) in &f.backends {
        els.insert(format!("backends-{p}: {ip} . {p} . {port} . {slot} : {} . {}", b.ip, b.port));
    }
    for (((p, port), slot), b) in &f.np_backends {
        els.insert(format!("np-backends-{p}: {p} . {port} . {slot} : {} . {}", b.ip, b.port));
    }
    for ip in &f.hairpin {
        els.insert(format!("hairpin: {ip} . {ip}"));
    }
    for (ip, p, port) in &f.reject {
        els.insert(format!("no-endpoints: {ip} . {p} . {port}"));
    }
    for (p, port) in &f.reject_nodeports {
        els.insert(format!("no-endpoint-nodeports: {p} . {port}"));
    }
    els
}

struct NodeDiff {
    node: String,
    elements: usize,
    missing: Vec<String>,
    extra: Vec<String>,
    error: Option<String>,
}

async fn nft_diffs(client: &kube::Client, lab: &str, nodes: u32, cidr: &str) -> Result<Vec<NodeDiff>> {
    let svcs = Api::<Service>::all(client.clone()).list(&ListParams::default()).await?.items;
    let slices = Api::<EndpointSlice>::all(client.clone()).list(&ListParams::default()).await?.items;
    let mut out = vec![];
    for n in 1..=nodes {
        let node = NodeInfo { name: format!("node-{n}"), cluster_cidr: cidr.parse().context("the lab's pod CIDR")? };
        let want = compiled_elements(&compile(&svcs, &slices, &node).flat());
        let netns = format!("weft-{lab}-node-{n}");
        let (have, error) = match tokio::task::spawn_blocking(move || kernel_elements(&netns)).await? {
            Ok(h) => (h, None),
            Err(e) => (BTreeSet::new(), Some(format!("{e:#}"))),
        };
        out.push(NodeDiff {
            node: node.name,
            elements: want.len(),
            missing: want.difference(&have).cloned().collect(),
            extra: have.difference(&want).cloned().collect(),
            error,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Check 3: leaks

fn lab_netns(lab: &str) -> Vec<String> {
    let prefix = format!("weft-{lab}-");
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn pod_netns_name(lab: &str, uid: &str) -> String {
    format!("weft-{lab}-pod-{}", &uid[..uid.len().min(13)])
}

/// Addresses host-local holds on each node (`nodes/<node>/ipam/<network>/<ip>`).
fn ipam_addresses(state: &Path) -> BTreeMap<Ipv4Addr, String> {
    let mut out = BTreeMap::new();
    for node in std::fs::read_dir(state.join("nodes")).into_iter().flatten().flatten() {
        for net in std::fs::read_dir(node.path().join("ipam")).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(net.path()).into_iter().flatten().flatten() {
                if let Ok(ip) = f.file_name().to_string_lossy().parse::<Ipv4Addr>() {
                    out.insert(ip, node.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    out
}

#[derive(Default)]
struct PodLeaks {
    /// Pod namespaces with no pod of that uid in the API.
    netns: Vec<String>,
    /// Addresses held by IPAM that no pod of the API has.
    addresses: Vec<String>,
    /// Objects whose owner (by ownerReferences uid) the API no longer has.
    orphans: Vec<Orphan>,
    /// Endpoints and EndpointSlices of Services that are gone (by name).
    stale: Vec<String>,
    /// Pods the API has bound to a node, Running, with no namespace (not a leak: reported).
    pods_without_netns: Vec<String>,
}

impl PodLeaks {
    fn count(&self) -> usize {
        self.netns.len() + self.addresses.len() + self.orphans.len() + self.stale.len()
    }
}

struct Orphan {
    what: String,
    uid: String,
    rv: u64,
    owner: String,
    owner_uid: String,
    pods_under: usize,
}

/// One object's life in the store's watch history.
#[derive(Clone, Debug, Default)]
struct Hist {
    name: String,
    added: Option<u64>,
    deleted: Option<u64>,
}

/// The lives of every object of the kinds that own or are owned, from the store's watch history
/// (a watch from revision 1 replays it; bounded in time).
async fn history(client: &kube::Client) -> HashMap<String, Hist> {
    use futures::StreamExt;
    let mut out: HashMap<String, Hist> = HashMap::new();
    let kinds = [
        ApiResource::erase::<Pod>(&()),
        ApiResource::erase::<ReplicaSet>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<EndpointSlice>(&()),
    ];
    for ar in kinds {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(10), api.watch(&WatchParams::default().timeout(5), "1")).await
        else {
            continue;
        };
        let mut stream = std::pin::pin!(stream);
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        while let Ok(Some(Ok(ev))) = tokio::time::timeout_at(until, stream.next()).await {
            let (o, deleted) = match ev {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => (o, false),
                WatchEvent::Deleted(o) => (o, true),
                _ => continue,
            };
            let h = out.entry(uid_of(&o)).or_default();
            h.name = format!(
                "{}/{}",
                o.metadata.namespace.as_deref().unwrap_or(""),
                o.metadata.name.as_deref().unwrap_or("")
            );
            if deleted {
                h.deleted = Some(rv_of(&o));
            } else if h.added.is_none() {
                h.added = Some(rv_of(&o));
            }
        }
    }
    out
}

/// What the history says of an orphan: made after its owner went (a controller acting on a
/// stale view, which nothing collects) or there before (the owner's cascade missed it).
fn explain(o: &Orphan, hist: &HashMap<String, Hist>, ctx: &Ctx) -> String {
    let when = |rv: Option<u64>| match rv {
        Some(rv) => format!("rv {rv} ({})", ctx.time_of(rv)),
        None => "rv ? (before the history)".into(),
    };
    let me = hist.get(&o.uid).cloned().unwrap_or_default();
    let owner = hist.get(&o.owner_uid).cloned().unwrap_or_default();
    let mut s = format!(
        "{} (uid {}, now rv {}) created at {}; its owner {} (uid {}) deleted at {}",
        o.what,
        short_uid(&o.uid),
        o.rv,
        when(me.added),
        o.owner,
        short_uid(&o.owner_uid),
        when(owner.deleted)
    );
    if let (Some(a), Some(d)) = (me.added, owner.deleted) {
        if a > d {
            s.push_str(": made after its owner was deleted (a controller's stale view; no garbage collector)");
        } else {
            s.push_str(": it existed when its owner was deleted, and the cascade did not delete it");
        }
        if let Some(t) = ctx.time_near(d) {
            s.push_str(&format!("; kills around then: {}", ctx.kills_near(t, 3.0)));
        }
    }
    if o.pods_under > 0 {
        s.push_str(&format!("; {} pods under it", o.pods_under));
    }
    s
}

fn short_uid(u: &str) -> &str {
    &u[..u.len().min(8)]
}

async fn pod_leaks(client: &kube::Client, lab: &str, state: &Path) -> Result<PodLeaks> {
    let pods = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await?.items;
    let rss = Api::<ReplicaSet>::all(client.clone()).list(&ListParams::default()).await?.items;
    let deps = Api::<Deployment>::all(client.clone()).list(&ListParams::default()).await?.items;
    let svcs = Api::<Service>::all(client.clone()).list(&ListParams::default()).await?.items;
    let slices = Api::<EndpointSlice>::all(client.clone()).list(&ListParams::default()).await?.items;
    let eps = Api::<Endpoints>::all(client.clone()).list(&ListParams::default()).await?.items;
    let mut l = PodLeaks::default();
    let want: HashSet<String> =
        pods.iter().filter_map(|p| p.metadata.uid.as_deref()).map(|u| pod_netns_name(lab, u)).collect();
    let have: Vec<String> = lab_netns(lab).into_iter().filter(|n| n.starts_with(&format!("weft-{lab}-pod-"))).collect();
    l.netns = have.iter().filter(|n| !want.contains(*n)).cloned().collect();
    for p in &pods {
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if let Some(uid) = p.metadata.uid.as_deref()
            && running
            && !have.contains(&pod_netns_name(lab, uid))
        {
            l.pods_without_netns.push(format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or(""), name_of(p)));
        }
    }
    let ips: HashSet<Ipv4Addr> =
        pods.iter().filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()).collect();
    l.addresses = ipam_addresses(state)
        .into_iter()
        .filter(|(ip, _)| !ips.contains(ip))
        .map(|(ip, node)| format!("{ip} on {node}"))
        .collect();
    let mut uids: HashSet<&str> = HashSet::new();
    uids.extend(pods.iter().filter_map(|o| o.metadata.uid.as_deref()));
    uids.extend(rss.iter().filter_map(|o| o.metadata.uid.as_deref()));
    uids.extend(deps.iter().filter_map(|o| o.metadata.uid.as_deref()));
    uids.extend(svcs.iter().filter_map(|o| o.metadata.uid.as_deref()));
    let metas = pods
        .iter()
        .map(|o| ("pod", &o.metadata))
        .chain(rss.iter().map(|o| ("replicaset", &o.metadata)))
        .chain(slices.iter().map(|o| ("endpointslice", &o.metadata)));
    for (kind, m) in metas {
        for r in m.owner_references.iter().flatten() {
            let tracked = matches!(r.kind.as_str(), "Deployment" | "ReplicaSet" | "Service" | "Pod");
            if !tracked || uids.contains(r.uid.as_str()) {
                continue;
            }
            let under = pods
                .iter()
                .filter(|p| p.metadata.owner_references.iter().flatten().any(|o| Some(&o.uid) == m.uid.as_ref()))
                .count();
            l.orphans.push(Orphan {
                what: format!("{kind} {}/{}", m.namespace.as_deref().unwrap_or(""), name_of_meta(m)),
                uid: m.uid.clone().unwrap_or_default(),
                rv: m.resource_version.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0),
                owner: format!("{} {}", r.kind, r.name),
                owner_uid: r.uid.clone(),
                pods_under: under,
            });
        }
    }
    // Slices and Endpoints of Services that no longer exist (by name).
    let svc_names: HashSet<(String, String)> = svcs
        .iter()
        .map(|s| (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default()))
        .collect();
    for sl in &slices {
        let ns = sl.metadata.namespace.clone().unwrap_or_default();
        if let Some((_, svc)) = weft_k8s::slices::service_of(sl)
            && !svc_names.contains(&(ns.clone(), svc.to_string()))
            && sl.metadata.owner_references.iter().flatten().all(|r| uids.contains(r.uid.as_str()))
        {
            l.stale.push(format!("endpointslice {ns}/{} of Service {svc}, which is gone", name_of_meta(&sl.metadata)));
        }
    }
    for e in &eps {
        let ns = e.metadata.namespace.clone().unwrap_or_default();
        let name = name_of_meta(&e.metadata).to_string();
        if !svc_names.contains(&(ns.clone(), name.clone())) {
            l.stale.push(format!("endpoints {ns}/{name}: its Service is gone"));
        }
    }
    Ok(l)
}

fn name_of_meta(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or("")
}

fn name_of(p: &Pod) -> &str {
    p.metadata.name.as_deref().unwrap_or("")
}

/// Processes left after `weft down`: cmdline naming the lab or its state directory, a network
/// namespace of the lab, or a session of one of its shims or daemons.
struct Leftover {
    pid: i32,
    /// Named the lab's state directory or name (so it is certainly this lab's, and safe to kill).
    names_lab: bool,
    session_leader: bool,
    line: String,
}

/// When a process started, in seconds since the run's start.
fn started_at(starttime_ticks: u64, start_unix: f64) -> Option<f64> {
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(btime + starttime_ticks as f64 / tck as f64 - start_unix)
}

/// Processes left after `weft down`: cmdline naming the lab or its state directory, a network
/// namespace of the lab, or a session of one of its shims or daemons. A pod shim's line says
/// which pod it ran and when that pod came and went (from the store's history).
fn leftover_processes(
    lab: &str,
    state: &Path,
    netns_inodes: &HashSet<u64>,
    sessions: &HashSet<i32>,
    hist: &HashMap<String, Hist>,
    ctx: &Ctx,
) -> Vec<Leftover> {
    let me = std::process::id() as i32;
    let state = state.display().to_string();
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim().to_string())
            .unwrap_or_default();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z") {
            continue;
        }
        let sid: i32 = f.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);
        let net_ino: Option<u64> = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| l.to_string_lossy().strip_prefix("net:[")?.strip_suffix(']')?.parse().ok());
        let names_lab = cmdline.contains(&state) || cmdline.contains(lab);
        let why = if names_lab {
            "names the lab"
        } else if net_ino.is_some_and(|i| netns_inodes.contains(&i)) {
            "in a lab namespace"
        } else if sessions.contains(&sid) {
            "in a lab session"
        } else {
            continue;
        };
        let started = f.get(19).and_then(|s| s.parse().ok()).and_then(|t| started_at(t, ctx.start_unix));
        let mut line = format!(
            "pid {pid} ({why}, started t={}): {cmdline}",
            started.map(|t| format!("{t:.1}s")).unwrap_or("?".into())
        );
        // `weft shim <state>/pods/<uid>/shim.json`: which pod, and its life.
        if let Some(uid) = cmdline.split("/pods/").nth(1).and_then(|r| r.split('/').next()) {
            match hist.get(uid) {
                Some(h) => line.push_str(&format!(
                    "; pod {} created at {}, deleted at {}",
                    h.name,
                    h.added.map(|r| format!("rv {r} ({})", ctx.time_of(r))).unwrap_or("?".into()),
                    h.deleted.map(|r| format!("rv {r} ({})", ctx.time_of(r))).unwrap_or("never".into()),
                )),
                None => line.push_str("; its pod is not in the store's history"),
            }
            if let Some(t) = started {
                line.push_str(&format!("; kills around its start: {}", ctx.kills_near(t, 2.0)));
            }
        }
        out.push(Leftover { pid, names_lab, session_leader: sid == pid, line });
    }
    out
}

// ---------------------------------------------------------------------------------------------

/// The lab's pod network, as `weft daemon` gives it to the proxy (`NodeInfo::cluster_cidr`).
fn lab_pod_cidr(state: &Path) -> Result<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(state.join("config.json"))?)?;
    Ok(v["pod_cidr"].as_str().unwrap_or("10.244.0.0/16").to_string())
}

fn sample(v: &[String], n: usize) -> String {
    let mut s: Vec<String> = v.iter().take(n).cloned().collect();
    if v.len() > n {
        s.push(format!("... {} more", v.len() - n));
    }
    s.join("\n      ")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos-bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> Result<bool> {
    let a = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (it makes network namespaces)");
    }
    let name = format!("weft-chaos-{}", std::process::id());
    println!("== chaos-bench");
    println!(
        "seed {} (replay: --seed {}), {} s, {} nodes, {} clients, kill every {}-{} s",
        a.seed, a.seed, a.secs, a.nodes, a.clients, a.kill_min, a.kill_max
    );
    let t0 = Instant::now();
    let mut lab = Lab::start(LabOptions::new().name(&name).nodes(a.nodes).up_limit(UP_TIMEOUT))?;
    let state = lab.state_dir();
    println!("lab {name} up in {:.2} s (state {})", t0.elapsed().as_secs_f64(), state.display());
    let cidr = lab_pod_cidr(&state)?;
    let client = lab_client(&lab).await?;

    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        start,
        deadline: start + Duration::from_secs(a.secs),
        hard_deadline: start + Duration::from_secs(a.secs) + Duration::from_secs(240),
        ops: AtomicU64::new(0),
        max_ops: a.max_ops,
        acked: AtomicU64::new(0),
        maybe: AtomicU64::new(0),
        not_sent: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        lost: Mutex::new(vec![]),
        odd: Mutex::new(vec![]),
        kills: Mutex::new(vec![]),
        daemon_down: AtomicBool::new(false),
        marks: Mutex::new(vec![]),
        start_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64(),
    });
    let shared = Arc::new(lab);
    let k = tokio::spawn(killer(shared.clone(), a.seed, (a.kill_min, a.kill_max), ctx.clone()));
    let clients: Vec<_> =
        (0..a.clients).map(|i| tokio::spawn(client_task(i, a.seed, client.clone(), ctx.clone()))).collect();
    let bound = Duration::from_secs(a.secs) + Duration::from_secs(300);
    let mut slots = vec![];
    for c in clients {
        match tokio::time::timeout_at((start + bound).into(), c).await {
            Ok(Ok(s)) => slots.extend(s),
            Ok(Err(e)) => bail!("a client task failed: {e}"),
            Err(_) => bail!("a client task did not finish within {bound:?}"),
        }
    }
    let restarts = match tokio::time::timeout_at((start + bound).into(), k).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => bail!("the killer task failed: {e}"),
        Err(_) => bail!("the killer did not finish within {bound:?}"),
    };
    let run_secs = start.elapsed().as_secs_f64();
    lab = Arc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("lab still shared"))?;
    // The daemon is up (the killer always resumes it); settle the unknown outcomes by reading.
    let settle = Instant::now();
    {
        let apis = Apis::new(&client);
        for s in slots.iter_mut().filter(|s| matches!(s.known, Known::Maybe { .. })) {
            resolve(&ctx, apis.of(s.kind), s).await;
        }
    }
    let unresolved = slots.iter().filter(|s| matches!(s.known, Known::Maybe { .. })).count();
    let settle_secs = settle.elapsed().as_secs_f64();

    // (1) acknowledged writes.
    let (checked, end_lost) = check_writes(&client, &slots, &ctx).await?;
    let mut lost = ctx.lost.lock().unwrap().clone();
    lost.extend(end_lost);

    // (2) nftables against a fresh compile, waiting for convergence.
    let nft_start = Instant::now();
    let mut diffs = nft_diffs(&client, &name, a.nodes, &cidr).await?;
    while diffs.iter().any(|d| !d.missing.is_empty() || !d.extra.is_empty() || d.error.is_some())
        && nft_start.elapsed() < CONVERGE
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        diffs = nft_diffs(&client, &name, a.nodes, &cidr).await?;
    }
    let nft_secs = nft_start.elapsed().as_secs_f64();

    // (3) pods' namespaces and addresses are the API's pods', no orphans; waiting for convergence.
    let leak_start = Instant::now();
    let mut pl = pod_leaks(&client, &name, &state).await?;
    while pl.count() > 0 && leak_start.elapsed() < CONVERGE {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pl = pod_leaks(&client, &name, &state).await?;
    }
    // The store's history tells how each orphan came about (read while the API is up).
    let hist = history(&client).await;
    let orphans_told: Vec<String> = pl.orphans.iter().map(|o| explain(o, &hist, &ctx)).collect();
    let pods_now = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await?.items.len();
    // What to look for after `weft down`.
    let before = lab_netns(&name);
    let inodes: HashSet<u64> =
        before.iter().filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok()).map(|m| m.ino()).collect();
    let mut sessions: HashSet<i32> = restarts.daemon_pids.iter().copied().collect();
    for e in std::fs::read_dir(state.join("pods")).into_iter().flatten().flatten() {
        if let Ok(v) = std::fs::read(e.path().join("sandbox.json")).map_err(anyhow::Error::from).and_then(|b| {
            let v: Value = serde_json::from_slice(&b)?;
            Ok(v)
        }) && let Some(pid) = v["shim_pid"].as_i64()
        {
            sessions.insert(pid as i32);
        }
    }
    let down_start = Instant::now();
    let down = lab.down(Duration::from_secs(120));
    let down_secs = down_start.elapsed().as_secs_f64();
    let mut ns_left = lab_netns(&name);
    let mut left = leftover_processes(&name, &state, &inodes, &sessions, &hist, &ctx);
    for _ in 0..50 {
        if ns_left.is_empty() && left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        ns_left = lab_netns(&name);
        left = leftover_processes(&name, &state, &inodes, &sessions, &hist, &ctx);
    }
    let procs_left: Vec<String> = left.iter().map(|l| l.line.clone()).collect();
    // Leave nothing behind on the machine: what certainly is this lab's (its cmdline names the
    // lab) is killed, with its session when it leads one (a shim and its containers).
    let mut killed = 0;
    for l in left.iter().filter(|l| l.names_lab) {
        let pid = nix::unistd::Pid::from_raw(l.pid);
        let r = if l.session_leader {
            nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL)
        } else {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
        };
        killed += r.is_ok() as usize;
    }

    // Report.
    let odd = ctx.odd.lock().unwrap().clone();
    let nft_total: usize = diffs.iter().map(|d| d.missing.len() + d.extra.len() + d.error.is_some() as usize).sum();
    let leaks = pl.count() + ns_left.len() + procs_left.len() + down.is_err() as usize;
    println!("-- run: {run_secs:.1} s, {} operations started", ctx.ops.load(Ordering::Relaxed).min(a.max_ops));
    println!("writes acknowledged:                 {}", ctx.acked.load(Ordering::Relaxed));
    println!("writes with unknown outcome (maybe): {}", ctx.maybe.load(Ordering::Relaxed));
    println!("writes refused by the API:           {}", ctx.refused.load(Ordering::Relaxed));
    println!("attempts refused while down (retried): {}", ctx.not_sent.load(Ordering::Relaxed));
    let ups = &restarts.up_times;
    println!(
        "restarts survived: {} (kill -9, then weft up: {}; down {:.1} s in all){}",
        restarts.survived,
        if ups.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}-{:.2} s", ups.iter().min().unwrap().as_secs_f64(), ups.iter().max().unwrap().as_secs_f64())
        },
        restarts.down_time.as_secs_f64(),
        if restarts.failed.is_empty() { String::new() } else { format!(", FAILED: {}", restarts.failed.join("; ")) }
    );
    println!(
        "objects checked: {checked} (unknown outcomes still open at the end settled in {settle_secs:.1} s, \
         {unresolved} left unsettled)"
    );
    println!("objects lost: {} (goal 0)", lost.len());
    if !lost.is_empty() {
        println!("      {}", sample(&lost, 20));
    }
    for d in &diffs {
        println!(
            "nft differences {}: {} (goal 0; {} elements compiled; missing {}, extra {}){}",
            d.node,
            d.missing.len() + d.extra.len() + d.error.is_some() as usize,
            d.elements,
            d.missing.len(),
            d.extra.len(),
            d.error.as_ref().map(|e| format!(", error: {e}")).unwrap_or_default()
        );
        if !d.missing.is_empty() {
            println!("    missing: {}", sample(&d.missing, 8));
        }
        if !d.extra.is_empty() {
            println!("    extra:   {}", sample(&d.extra, 8));
        }
    }
    println!("nft checked after {nft_secs:.1} s of waiting");
    println!(
        "before weft down: {pods_now} pods in the API, {} lab namespaces; pods Running without a namespace: {}",
        before.len(),
        pl.pods_without_netns.len()
    );
    println!("leaked pod namespaces: {} (goal 0)", pl.netns.len());
    if !pl.netns.is_empty() {
        println!("      {}", sample(&pl.netns, 10));
    }
    println!("leaked pod addresses: {} (goal 0)", pl.addresses.len());
    if !pl.addresses.is_empty() {
        println!("      {}", sample(&pl.addresses, 10));
    }
    println!("orphaned dependents (owner gone, never collected): {} (goal 0)", pl.orphans.len());
    if !pl.orphans.is_empty() {
        println!("      {}", sample(&orphans_told, 10));
    }
    println!("Endpoints/EndpointSlices of deleted Services: {} (goal 0)", pl.stale.len());
    if !pl.stale.is_empty() {
        println!("      {}", sample(&pl.stale, 10));
    }
    println!(
        "weft down: {down_secs:.2} s{}",
        down.as_ref().err().map(|e| format!(", FAILED: {e:#}")).unwrap_or_default()
    );
    println!("namespaces left after weft down: {} (goal 0)", ns_left.len());
    if !ns_left.is_empty() {
        println!("      {}", sample(&ns_left, 10));
    }
    println!("processes left after weft down: {} (goal 0)", procs_left.len());
    if !procs_left.is_empty() {
        println!("      {}", sample(&procs_left, 10));
        println!("      (killed {killed} of them, with their sessions: those whose command line names the lab)");
    }
    if !odd.is_empty() {
        println!("other surprises: {}\n      {}", odd.len(), sample(&odd, 10));
    }
    let ok = lost.is_empty() && nft_total == 0 && leaks == 0 && restarts.failed.is_empty() && odd.is_empty();
    println!("result: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}
