//! The embedded object store behind weft's API server.
//!
//! Objects are JSON documents keyed by (resource, namespace, name). Every write gets the next value
//! of one global revision, which becomes the object's `metadata.resourceVersion`. Writes are
//! durable before they are acknowledged: a single writer thread gathers whatever writes are waiting,
//! checks their preconditions, commits them to redb in one transaction (group commit) and only then
//! updates the in-memory copy, appends to the watch history and wakes watchers. A `kill -9` at any
//! point therefore loses nothing that was acknowledged and never leaves half a write behind.
//!
//! Reads (get, list, watch start) are served from memory; redb is only read at open.
//!
//! Architecture invariant: this crate knows nothing about Kubernetes kinds beyond
//! `metadata.resourceVersion`; validation, defaulting and allocation live in the API server.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock, mpsc};
use std::thread;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// How many events the watch history keeps by default (memory and disk).
pub const DEFAULT_HISTORY: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{resource} {key} already exists")]
    AlreadyExists { resource: String, key: String },
    #[error("{resource} {key} not found")]
    NotFound { resource: String, key: String },
    #[error(
        "{resource} {key}: the object has been modified (resourceVersion {expected} is stale, current is {actual}); read it again and retry"
    )]
    Conflict { resource: String, key: String, expected: u64, actual: u64 },
    #[error("watch from resourceVersion {requested} is too old: history starts at {oldest}")]
    Gone { requested: u64, oldest: u64 },
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("the store is closed")]
    Closed,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}
macro_rules! io_from {
    ($($t:ty),*) => {$(impl From<$t> for StoreError { fn from(e: $t) -> Self { StoreError::Io(e.to_string()) } })*};
}
io_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

/// Identifies one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The plural resource name, qualified with its group when it has one (`deployments.apps`).
    pub resource: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(resource: &str, namespace: &str, name: &str) -> Key {
        Key { resource: resource.into(), namespace: namespace.into(), name: name.into() }
    }
    fn db_key(&self) -> String {
        format!("{}/{}/{}", self.resource, self.namespace, self.name)
    }
    fn from_db_key(k: &str) -> Option<Key> {
        let mut it = k.splitn(3, '/');
        Some(Key::new(it.next()?, it.next()?, it.next()?))
    }
    fn display(&self) -> String {
        if self.namespace.is_empty() { self.name.clone() } else { format!("{}/{}", self.namespace, self.name) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "ADDED")]
    Added,
    #[serde(rename = "MODIFIED")]
    Modified,
    #[serde(rename = "DELETED")]
    Deleted,
}

impl EventType {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watchers see it.
#[derive(Debug)]
pub struct Event {
    pub rev: u64,
    pub kind: EventType,
    pub key: Key,
    /// The object after the change (for deletes: as it was, with the deletion's resourceVersion).
    pub object: Arc<Value>,
}

#[derive(Serialize, Deserialize)]
struct StoredEvent {
    kind: EventType,
    resource: String,
    namespace: String,
    name: String,
    object: Value,
}

/// What a write must find before it may go ahead.
#[derive(Clone, Copy, Debug)]
pub enum Precondition {
    /// Create: the key must not exist.
    Absent,
    /// Update/delete: the object must exist; when a revision is given it must be the current one.
    Present(Option<u64>),
}

pub enum Op {
    Put { key: Key, object: Value, pre: Precondition },
    Delete { key: Key, pre: Precondition },
}

/// Where a write's outcome goes.
type Reply = oneshot::Sender<Result<Arc<Value>, StoreError>>;

enum WriteReq {
    Write {
        op: Op,
        reply: oneshot::Sender<Result<Arc<Value>, StoreError>>,
    },
    /// Stop the writer and release the database file, then answer.
    Close(mpsc::Sender<()>),
}

type Objects = HashMap<String, BTreeMap<(String, String), Arc<Value>>>;

struct State {
    rev: u64,
    objects: Objects,
    history: VecDeque<Arc<Event>>,
    /// Events with a revision above this are all in `history`.
    history_floor: u64,
}

struct Shared {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<Event>>,
}

/// A handle to the store; cheap to clone.
/// A page of a list (see [`Store::list_page`]).
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Arc<Value>>,
    /// Objects accepted by the filter follow the page.
    pub more: bool,
    /// Objects of the kind (in the namespace) after the page's last one, filtered or not.
    pub remaining: usize,
    pub rev: u64,
}

#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    writer: mpsc::Sender<WriteReq>,
}

/// A started watch: the events already in history after the requested revision, then a live feed.
pub struct Watch {
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The store's revision when the watch started (for bookmarks).
    pub rev: u64,
}

impl Store {
    /// Opens (or creates) the store in `path`, keeping `history` events for watches.
    pub fn open(path: &Path, history: usize) -> Result<Store, StoreError> {
        // The store serves reads from memory; redb's page cache only needs to cover writes.
        let db = Database::builder().set_cache_size(16 << 20).create(path)?;
        let state = {
            let wtx = db.begin_write()?;
            {
                wtx.open_table(OBJECTS)?;
                wtx.open_table(EVENTS)?;
                wtx.open_table(META)?;
            }
            wtx.commit()?;
            let rtx = db.begin_read()?;
            let meta = rtx.open_table(META)?;
            let rev = meta.get("rev")?.map(|v| v.value()).unwrap_or(0);
            let floor = meta.get("floor")?.map(|v| v.value()).unwrap_or(0);
            let mut objects: Objects = HashMap::new();
            for row in rtx.open_table(OBJECTS)?.iter()? {
                let (k, v) = row?;
                let Some(key) = Key::from_db_key(k.value()) else {
                    continue;
                };
                let obj: Value = serde_json::from_slice(v.value())?;
                objects.entry(key.resource).or_default().insert((key.namespace, key.name), Arc::new(obj));
            }
            let mut hist = VecDeque::new();
            for row in rtx.open_table(EVENTS)?.iter()? {
                let (r, v) = row?;
                let se: StoredEvent = serde_json::from_slice(v.value())?;
                hist.push_back(Arc::new(Event {
                    rev: r.value(),
                    kind: se.kind,
                    key: Key { resource: se.resource, namespace: se.namespace, name: se.name },
                    object: Arc::new(se.object),
                }));
            }
            State { rev, objects, history: hist, history_floor: floor }
        };
        let (events, _) = broadcast::channel(8192);
        let shared = Arc::new(Shared { state: RwLock::new(state), events });
        let (tx, rx) = mpsc::channel::<WriteReq>();
        let s2 = shared.clone();
        thread::Builder::new()
            .name("weft-store-writer".into())
            .spawn(move || writer_loop(db, s2, rx, history.max(1)))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(Store { shared, writer: tx })
    }

    /// The current revision (what a list reports as its resourceVersion).
    pub fn revision(&self) -> u64 {
        self.shared.state.read().unwrap().rev
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        let st = self.shared.state.read().unwrap();
        st.objects.get(&key.resource)?.get(&(key.namespace.clone(), key.name.clone())).cloned()
    }

    /// All objects of a resource (in one namespace when given), in key order, with the revision
    /// the list is consistent at.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let st = self.shared.state.read().unwrap();
        let items = match st.objects.get(resource) {
            None => vec![],
            Some(m) => match namespace {
                None => m.values().cloned().collect(),
                Some(ns) => m
                    .range((ns.to_string(), String::new())..)
                    .take_while(|((n, _), _)| n == ns)
                    .map(|(_, v)| v.clone())
                    .collect(),
            },
        };
        (items, st.rev)
    }

    /// One page of a list: up to `limit` objects that `keep` accepts, in (namespace, name)
    /// order, starting after the key `after`. Reads only as far as the page goes (and, for
    /// `remaining`, counts the keys after it), so paging through a kind is linear in its size.
    pub fn list_page(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
        mut keep: impl FnMut(&Value) -> bool,
    ) -> Page {
        let st = self.shared.state.read().unwrap();
        let mut page = Page { items: vec![], more: false, remaining: 0, rev: st.rev };
        let Some(m) = st.objects.get(resource) else { return page };
        let first = namespace.map(|ns| (ns.to_string(), String::new()));
        let start = match (after, first) {
            // A key before the namespace (only a made-up token has one) starts at the namespace.
            (Some(a), Some(f)) if *a < f => Bound::Included(f),
            (Some(a), _) => Bound::Excluded(a.clone()),
            (None, Some(f)) => Bound::Included(f),
            (None, None) => Bound::Unbounded,
        };
        let mut range = m.range((start, Bound::Unbounded)).take_while(|((n, _), _)| namespace.is_none_or(|ns| n == ns));
        for (_, v) in range.by_ref() {
            if keep(v) {
                if page.items.len() == limit {
                    page.more = true;
                    page.remaining = 1;
                    break;
                }
                page.items.push(v.clone());
            }
        }
        if page.more {
            page.remaining += range.count();
        }
        page
    }

    /// Starts a watch of everything after revision `from` (the caller filters by resource).
    pub fn watch(&self, from: u64) -> Result<Watch, StoreError> {
        let st = self.shared.state.read().unwrap();
        if from < st.history_floor {
            return Err(StoreError::Gone { requested: from, oldest: st.history_floor + 1 });
        }
        let start = st.history.partition_point(|e| e.rev <= from);
        let backlog = st.history.iter().skip(start).cloned().collect();
        Ok(Watch { backlog, live: self.shared.events.subscribe(), rev: st.rev })
    }

    /// Applies one write durably; returns the stored object (for deletes, the object as deleted).
    pub async fn write(&self, op: Op) -> Result<Arc<Value>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(WriteReq::Write { op, reply }).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Finishes pending writes and releases the database file (for handing it to another opener).
    pub fn close(&self) {
        let (tx, rx) = mpsc::channel();
        if self.writer.send(WriteReq::Close(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    pub async fn create(&self, key: Key, object: Value) -> Result<Arc<Value>, StoreError> {
        self.write(Op::Put { key, object, pre: Precondition::Absent }).await
    }
    pub async fn update(&self, key: Key, object: Value, rv: Option<u64>) -> Result<Arc<Value>, StoreError> {
        self.write(Op::Put { key, object, pre: Precondition::Present(rv) }).await
    }
    pub async fn delete(&self, key: Key, rv: Option<u64>) -> Result<Arc<Value>, StoreError> {
        self.write(Op::Delete { key, pre: Precondition::Present(rv) }).await
    }
}

fn rv_of(v: &Value) -> u64 {
    v.pointer("/metadata/resourceVersion").and_then(|r| r.as_str()).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn set_rv(v: &mut Value, rev: u64) {
    if let Some(md) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        md.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

/// A write that passed its preconditions within the batch.
struct Staged {
    event: Arc<Event>,
    reply: Reply,
}

fn writer_loop(db: Database, shared: Arc<Shared>, rx: mpsc::Receiver<WriteReq>, history: usize) {
    let mut closing = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![];
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                WriteReq::Write { op, reply } => batch.push((op, reply)),
                WriteReq::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if batch.len() < 4096 {
                next = rx.try_recv().ok();
            }
        }
        commit_batch(&db, &shared, batch, history);
        if closing.is_some() {
            break;
        }
    }
    drop(db);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

fn commit_batch(db: &Database, shared: &Shared, batch: Vec<(Op, Reply)>, history: usize) {
    {
        // Check preconditions against memory plus the batch's own earlier writes.
        let (mut rev, mut staged) = (shared.state.read().unwrap().rev, Vec::<Staged>::new());
        let mut overlay: HashMap<Key, Option<Arc<Value>>> = HashMap::new();
        {
            let st = shared.state.read().unwrap();
            for (op, reply) in batch {
                let key = match &op {
                    Op::Put { key, .. } | Op::Delete { key, .. } => key.clone(),
                };
                let current = match overlay.get(&key) {
                    Some(v) => v.clone(),
                    None => st
                        .objects
                        .get(&key.resource)
                        .and_then(|m| m.get(&(key.namespace.clone(), key.name.clone())))
                        .cloned(),
                };
                let check = |pre: Precondition| -> Result<(), StoreError> {
                    match (pre, &current) {
                        (Precondition::Absent, Some(_)) => {
                            Err(StoreError::AlreadyExists { resource: key.resource.clone(), key: key.display() })
                        }
                        (Precondition::Present(_), None) => {
                            Err(StoreError::NotFound { resource: key.resource.clone(), key: key.display() })
                        }
                        (Precondition::Present(Some(want)), Some(cur)) if rv_of(cur) != want => {
                            Err(StoreError::Conflict {
                                resource: key.resource.clone(),
                                key: key.display(),
                                expected: want,
                                actual: rv_of(cur),
                            })
                        }
                        _ => Ok(()),
                    }
                };
                let result = match op {
                    Op::Put { object, pre, .. } => check(pre).map(|_| {
                        let mut object = object;
                        rev += 1;
                        set_rv(&mut object, rev);
                        let kind = if current.is_some() { EventType::Modified } else { EventType::Added };
                        (kind, Arc::new(object))
                    }),
                    Op::Delete { pre, .. } => check(pre).map(|_| {
                        rev += 1;
                        let mut object = (**current.as_ref().unwrap()).clone();
                        set_rv(&mut object, rev);
                        (EventType::Deleted, Arc::new(object))
                    }),
                };
                match result {
                    Ok((kind, object)) => {
                        overlay
                            .insert(key.clone(), if kind == EventType::Deleted { None } else { Some(object.clone()) });
                        staged.push(Staged { event: Arc::new(Event { rev, kind, key, object }), reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
        if staged.is_empty() {
            return;
        }
        // Make the batch durable, trimming history in the same transaction.
        let floor = shared.state.read().unwrap().history_floor;
        let new_floor = rev.saturating_sub(history as u64).max(floor);
        let committed = (|| -> Result<(), StoreError> {
            let wtx = db.begin_write()?;
            {
                let mut objs = wtx.open_table(OBJECTS)?;
                let mut evs = wtx.open_table(EVENTS)?;
                for s in &staged {
                    let e = &s.event;
                    let dbk = e.key.db_key();
                    if e.kind == EventType::Deleted {
                        objs.remove(dbk.as_str())?;
                    } else {
                        objs.insert(dbk.as_str(), serde_json::to_vec(&*e.object)?.as_slice())?;
                    }
                    let se = StoredEvent {
                        kind: e.kind,
                        resource: e.key.resource.clone(),
                        namespace: e.key.namespace.clone(),
                        name: e.key.name.clone(),
                        object: (*e.object).clone(),
                    };
                    evs.insert(e.rev, serde_json::to_vec(&se)?.as_slice())?;
                }
                if new_floor > floor {
                    evs.retain_in(..=new_floor, |_, _| false)?;
                }
                let mut meta = wtx.open_table(META)?;
                meta.insert("rev", rev)?;
                meta.insert("floor", new_floor)?;
            }
            wtx.commit()?;
            Ok(())
        })();
        if let Err(e) = committed {
            tracing::error!(error = %e, "store commit failed");
            for s in staged {
                let _ = s.reply.send(Err(StoreError::Io(e.to_string())));
            }
            return;
        }
        let mut st = shared.state.write().unwrap();
        for s in staged {
            let e = &s.event;
            let m = st.objects.entry(e.key.resource.clone()).or_default();
            let k = (e.key.namespace.clone(), e.key.name.clone());
            if e.kind == EventType::Deleted {
                m.remove(&k);
            } else {
                m.insert(k, e.object.clone());
            }
            st.history.push_back(s.event.clone());
            let _ = shared.events.send(s.event.clone());
            let _ = s.reply.send(Ok(s.event.object.clone()));
        }
        st.rev = rev;
        st.history_floor = new_floor;
        while st.history.front().is_some_and(|e| e.rev <= new_floor) {
            st.history.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {}})
    }

    #[tokio::test]
    async fn revisions_grow_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open(&path, 100).unwrap();
            let a = s.create(Key::new("pods", "default", "a"), obj("a")).await.unwrap();
            assert_eq!(rv_of(&a), 1);
            let b = s.update(Key::new("pods", "default", "a"), obj("a"), Some(1)).await.unwrap();
            assert_eq!(rv_of(&b), 2);
            let err = s.update(Key::new("pods", "default", "a"), obj("a"), Some(1)).await.unwrap_err();
            assert!(matches!(err, StoreError::Conflict { expected: 1, actual: 2, .. }));
            let err = s.create(Key::new("pods", "default", "a"), obj("a")).await.unwrap_err();
            assert!(matches!(err, StoreError::AlreadyExists { .. }));
            s.create(Key::new("pods", "other", "c"), obj("c")).await.unwrap();
            s.delete(Key::new("pods", "other", "c"), None).await.unwrap();
            s.close();
        }
        let s = Store::open(&path, 100).unwrap();
        assert_eq!(s.revision(), 4);
        assert_eq!(s.list("pods", None).0.len(), 1);
        assert_eq!(s.list("pods", Some("other")).0.len(), 0);
        let w = s.watch(1).unwrap();
        let kinds: Vec<_> = w.backlog.iter().map(|e| (e.rev, e.kind)).collect();
        assert_eq!(kinds, vec![(2, EventType::Modified), (3, EventType::Added), (4, EventType::Deleted)]);
    }

    #[tokio::test]
    async fn pages_follow_list_order_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db"), 100).unwrap();
        for (ns, name) in [("a", "1"), ("b", "1"), ("b", "2"), ("b", "3"), ("b", "4"), ("c", "1")] {
            let o = json!({"metadata": {"name": name, "namespace": ns}, "spec": {}});
            s.create(Key::new("pods", ns, name), o).await.unwrap();
        }
        let names = |p: &Page| -> Vec<String> {
            p.items
                .iter()
                .map(|o| format!("{}/{}", o["metadata"]["namespace"], o["metadata"]["name"]).replace('"', ""))
                .collect()
        };
        let all = |_: &Value| true;
        let p = s.list_page("pods", None, None, 2, all);
        assert_eq!((names(&p), p.more, p.remaining), (vec!["a/1".into(), "b/1".into()], true, 4));
        let after = ("b".to_string(), "1".to_string());
        let p = s.list_page("pods", None, Some(&after), 10, all);
        assert_eq!((names(&p).len(), p.more, p.remaining), (4, false, 0));
        let p = s.list_page("pods", Some("b"), Some(&after), 2, all);
        assert_eq!((names(&p), p.more, p.remaining), (vec!["b/2".into(), "b/3".into()], true, 1));
        // A key from before the namespace starts at the namespace; the next one never leaves it.
        let early = ("a".to_string(), "9".to_string());
        assert_eq!(names(&s.list_page("pods", Some("b"), Some(&early), 1, all)), vec!["b/1".to_string()]);
        let last = ("b".to_string(), "4".to_string());
        assert!(s.list_page("pods", Some("b"), Some(&last), 5, all).items.is_empty());
        // A filter skips objects; `more` says whether an accepted one follows.
        let even = |o: &Value| o["metadata"]["name"].as_str().is_some_and(|n| n == "2" || n == "4");
        let p = s.list_page("pods", None, None, 1, even);
        assert_eq!((names(&p), p.more), (vec!["b/2".to_string()], true));
        let p = s.list_page("pods", None, Some(&("b".to_string(), "2".to_string())), 1, even);
        assert_eq!((names(&p), p.more), (vec!["b/4".to_string()], false));
    }

    #[tokio::test]
    async fn history_window_gives_gone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db"), 3).unwrap();
        for i in 0..6 {
            s.create(Key::new("pods", "default", &format!("p{i}")), obj("p")).await.unwrap();
        }
        assert!(matches!(s.watch(1), Err(StoreError::Gone { .. })));
        assert_eq!(s.watch(3).unwrap().backlog.len(), 3);
    }

    #[tokio::test]
    async fn concurrent_writes_get_distinct_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db"), 1000).unwrap();
        let mut tasks = vec![];
        for i in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                rv_of(&s.create(Key::new("svc", "default", &format!("s{i}")), obj("s")).await.unwrap())
            }));
        }
        let mut revs = vec![];
        for t in tasks {
            revs.push(t.await.unwrap());
        }
        revs.sort();
        revs.dedup();
        assert_eq!(revs.len(), 200);
        assert_eq!(s.revision(), 200);
    }
}
