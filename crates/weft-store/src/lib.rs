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
/// Rows that did not parse at open, set aside (not lost) so the rest of the store can start.
const SET_ASIDE: TableDefinition<&str, &[u8]> = TableDefinition::new("set-aside");

/// How many events the watch history keeps by default (memory and disk).
pub const DEFAULT_HISTORY: usize = 50_000;
/// How many bytes of objects the watch history keeps at most (memory and disk), whatever the
/// count: 50 000 events of large objects must not take the machine's memory.
pub const HISTORY_BYTES: usize = 256 << 20;
/// The largest object the store takes (etcd's default request limit is 1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;
/// A stored event starts with this, then a JSON header line, then the object's JSON as it was
/// written: the object is never nested one level deeper than it was admitted (an object admitted
/// at the parser's depth limit would otherwise not parse back, and the store would not open).
const EVENT_V2: &[u8] = b"E2";

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
    #[error("watch from resourceVersion {requested} is in the future: the current one is {current}")]
    TooLarge { requested: u64, current: u64 },
    #[error("{resource} {key} is {size} bytes: the largest object the store takes is {MAX_OBJECT_BYTES} bytes")]
    TooBig { resource: String, key: String, size: usize },
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("{0}")]
    Unusable(String),
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
    /// The object's size as stored (for the history's byte bound).
    pub size: usize,
}

/// A stored event's header (its object follows it; see [`EVENT_V2`]).
#[derive(Serialize, Deserialize)]
struct EventHeader {
    kind: EventType,
    resource: String,
    namespace: String,
    name: String,
}

/// The layout before [`EVENT_V2`]: the object inside the event (still read).
#[derive(Deserialize)]
struct StoredEventV1 {
    kind: EventType,
    resource: String,
    namespace: String,
    name: String,
    object: Value,
}

fn encode_event(h: &EventHeader, object: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut out = EVENT_V2.to_vec();
    serde_json::to_writer(&mut out, h)?;
    out.push(b'\n');
    out.extend_from_slice(object);
    Ok(out)
}

fn decode_event(bytes: &[u8]) -> Result<(EventHeader, Value), String> {
    if let Some(rest) = bytes.strip_prefix(EVENT_V2) {
        let nl = rest.iter().position(|b| *b == b'\n').ok_or("no header line")?;
        let h: EventHeader = serde_json::from_slice(&rest[..nl]).map_err(|e| e.to_string())?;
        let o: Value = serde_json::from_slice(&rest[nl + 1..]).map_err(|e| e.to_string())?;
        return Ok((h, o));
    }
    let v: StoredEventV1 = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok((EventHeader { kind: v.kind, resource: v.resource, namespace: v.namespace, name: v.name }, v.object))
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
    /// The sum of the history's object sizes.
    history_bytes: usize,
    /// Events with a revision above this are all in `history`.
    history_floor: u64,
}

struct Shared {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<Event>>,
    /// The last commit's error, if it failed (the store cannot write: not ready).
    failing: RwLock<Option<String>>,
    /// Rows set aside at open because they did not parse.
    set_aside: usize,
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
    /// Opens (or creates) the store in `path`, keeping `history` events for watches. A file
    /// that is empty or not a store is refused with what to do (never silently replaced by an
    /// empty store); rows that do not parse are set aside, logged, and the rest opens.
    pub fn open(path: &Path, history: usize) -> Result<Store, StoreError> {
        check_file(path)?;
        let unusable = |e: &dyn std::fmt::Display| {
            StoreError::Unusable(format!(
                "{} is not a weft store or is damaged ({e}): move it aside (the lab then starts empty) or restore a copy",
                path.display()
            ))
        };
        // redb panics on some damaged files (seen with a fuzzer: an index out of bounds in its
        // page allocator); that is an unusable file, not a crash.
        let opened = std::panic::catch_unwind(|| -> Result<_, StoreError> {
            // The store serves reads from memory; redb's page cache only needs to cover writes.
            let db = Database::builder().set_cache_size(16 << 20).create(path).map_err(|e| unusable(&e))?;
            let (state, set_aside) = load(&db, path)?;
            Ok((db, state, set_aside))
        });
        let (db, state, set_aside) = match opened {
            Ok(r) => r?,
            Err(p) => {
                let what =
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                return Err(unusable(&format!("the database library failed: {}", what.unwrap_or_default())));
            }
        };
        let (events, _) = broadcast::channel(8192);
        let shared = Arc::new(Shared { state: RwLock::new(state), events, failing: RwLock::new(None), set_aside });
        let (tx, rx) = mpsc::channel::<WriteReq>();
        let s2 = shared.clone();
        thread::Builder::new()
            .name("weft-store-writer".into())
            .spawn(move || writer_loop(db, s2, rx, history.max(1)))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(Store { shared, writer: tx })
    }

    /// None when the store can write; else the last commit's error.
    pub fn failing(&self) -> Option<String> {
        self.shared.failing.read().unwrap().clone()
    }

    /// How many rows were set aside at open because they did not parse.
    pub fn set_aside(&self) -> usize {
        self.shared.set_aside
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
        if from > st.rev {
            // kube-apiserver refuses these too: events up to `from` would be skipped unseen.
            return Err(StoreError::TooLarge { requested: from, current: st.rev });
        }
        if from < st.history_floor {
            return Err(StoreError::Gone { requested: from, oldest: st.history_floor + 1 });
        }
        let start = st.history.partition_point(|e| e.rev <= from);
        let backlog = st.history.iter().skip(start).cloned().collect();
        Ok(Watch { backlog, live: self.shared.events.subscribe(), rev: st.rev })
    }

    /// Whether a write after revision `from` touched a resource `of` accepts, with the revision
    /// that answer is current at; None when the history no longer reaches back to `from`. A
    /// look through the history, without the copies and the subscription of a [`Store::watch`].
    pub fn wrote_since(&self, from: u64, of: impl Fn(&str) -> bool) -> Option<(bool, u64)> {
        let st = self.shared.state.read().unwrap();
        if from < st.history_floor || from > st.rev {
            return None;
        }
        let start = st.history.partition_point(|e| e.rev <= from);
        Some((st.history.iter().skip(start).any(|e| of(&e.key.resource)), st.rev))
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

/// Refuses a file that cannot be a store: opening it would make a new empty store in its place.
fn check_file(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => Err(StoreError::Unusable(format!(
            "{} is empty (0 bytes): the store was truncated and its objects are gone; move it aside \
             (mv {0} {0}.empty) to start the lab with an empty store, or restore a copy",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Reads the whole store into memory; rows that do not parse move to the `set-aside` table.
fn load(db: &Database, path: &Path) -> Result<(State, usize), StoreError> {
    let wtx = db.begin_write()?;
    {
        wtx.open_table(OBJECTS)?;
        wtx.open_table(EVENTS)?;
        wtx.open_table(META)?;
        wtx.open_table(SET_ASIDE)?;
    }
    wtx.commit()?;
    let rtx = db.begin_read()?;
    let meta = rtx.open_table(META)?;
    let rev = meta.get("rev")?.map(|v| v.value()).unwrap_or(0);
    let floor = meta.get("floor")?.map(|v| v.value()).unwrap_or(0);
    let mut bad_objects: Vec<(String, Vec<u8>, String)> = vec![];
    let mut bad_events: Vec<(u64, Vec<u8>, String)> = vec![];
    let mut objects: Objects = HashMap::new();
    for row in rtx.open_table(OBJECTS)?.iter()? {
        let (k, v) = row?;
        let Some(key) = Key::from_db_key(k.value()) else {
            bad_objects.push((
                k.value().to_string(),
                v.value().to_vec(),
                "a key that is not resource/namespace/name".into(),
            ));
            continue;
        };
        match serde_json::from_slice::<Value>(v.value()) {
            Ok(obj) => {
                objects.entry(key.resource).or_default().insert((key.namespace, key.name), Arc::new(obj));
            }
            Err(e) => bad_objects.push((k.value().to_string(), v.value().to_vec(), e.to_string())),
        }
    }
    let mut hist = VecDeque::new();
    let mut history_bytes = 0;
    for row in rtx.open_table(EVENTS)?.iter()? {
        let (r, v) = row?;
        match decode_event(v.value()) {
            Ok((h, object)) => {
                let size = v.value().len();
                history_bytes += size;
                hist.push_back(Arc::new(Event {
                    rev: r.value(),
                    kind: h.kind,
                    key: Key { resource: h.resource, namespace: h.namespace, name: h.name },
                    object: Arc::new(object),
                    size,
                }));
            }
            Err(e) => bad_events.push((r.value(), v.value().to_vec(), e)),
        }
    }
    drop(rtx);
    let mut floor = floor;
    let set_aside = bad_objects.len() + bad_events.len();
    if set_aside > 0 {
        let wtx = db.begin_write()?;
        {
            let mut objs = wtx.open_table(OBJECTS)?;
            let mut evs = wtx.open_table(EVENTS)?;
            let mut aside = wtx.open_table(SET_ASIDE)?;
            for (k, v, e) in &bad_objects {
                tracing::error!(store = %path.display(), key = %k, error = %e, "an object in the store does not parse: set aside in the table `set-aside`");
                eprintln!("weft store {}: object {k} does not parse ({e}); set aside", path.display());
                aside.insert(format!("object/{k}").as_str(), v.as_slice())?;
                objs.remove(k.as_str())?;
            }
            for (r, v, e) in &bad_events {
                tracing::error!(store = %path.display(), revision = r, error = %e, "a watch event in the store does not parse: set aside");
                eprintln!("weft store {}: event {r} does not parse ({e}); set aside", path.display());
                aside.insert(format!("event/{r:020}").as_str(), v.as_slice())?;
                evs.remove(*r)?;
            }
            // Watches must not resume across a hole in the history.
            if let Some(last_bad) = bad_events.iter().map(|(r, _, _)| *r).max() {
                floor = floor.max(last_bad);
                wtx.open_table(META)?.insert("floor", floor)?;
            }
        }
        wtx.commit()?;
        hist.retain(|e: &Arc<Event>| e.rev > floor);
        history_bytes = hist.iter().map(|e| e.size).sum();
    }
    Ok((State { rev, objects, history: hist, history_bytes, history_floor: floor }, set_aside))
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
    /// The object as stored.
    bytes: Vec<u8>,
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
                    Op::Put { object, pre, .. } => check(pre).and_then(|_| {
                        let mut object = object;
                        set_rv(&mut object, rev + 1);
                        let bytes = serde_json::to_vec(&object)?;
                        if bytes.len() > MAX_OBJECT_BYTES {
                            return Err(StoreError::TooBig {
                                resource: key.resource.clone(),
                                key: key.display(),
                                size: bytes.len(),
                            });
                        }
                        rev += 1;
                        let kind = if current.is_some() { EventType::Modified } else { EventType::Added };
                        Ok((kind, Arc::new(object), bytes))
                    }),
                    Op::Delete { pre, .. } => check(pre).and_then(|_| {
                        rev += 1;
                        let mut object = (**current.as_ref().unwrap()).clone();
                        set_rv(&mut object, rev);
                        let bytes = serde_json::to_vec(&object)?;
                        Ok((EventType::Deleted, Arc::new(object), bytes))
                    }),
                };
                match result {
                    Ok((kind, object, bytes)) => {
                        overlay
                            .insert(key.clone(), if kind == EventType::Deleted { None } else { Some(object.clone()) });
                        let size = bytes.len();
                        staged.push(Staged { event: Arc::new(Event { rev, kind, key, object, size }), bytes, reply });
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
        // Make the batch durable, trimming history in the same transaction: to `history`
        // events, and to the byte budget.
        let new_floor = {
            let st = shared.state.read().unwrap();
            let mut floor = rev.saturating_sub(history as u64).max(st.history_floor);
            let mut bytes = st.history_bytes + staged.iter().map(|s| s.event.size).sum::<usize>();
            let mut old = st.history.iter().chain(staged.iter().map(|s| &s.event));
            while bytes > HISTORY_BYTES {
                let Some(e) = old.next() else { break };
                bytes -= e.size;
                floor = floor.max(e.rev);
            }
            floor
        };
        let floor = shared.state.read().unwrap().history_floor;
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
                        objs.insert(dbk.as_str(), s.bytes.as_slice())?;
                    }
                    let h = EventHeader {
                        kind: e.kind,
                        resource: e.key.resource.clone(),
                        namespace: e.key.namespace.clone(),
                        name: e.key.name.clone(),
                    };
                    evs.insert(e.rev, encode_event(&h, &s.bytes)?.as_slice())?;
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
            *shared.failing.write().unwrap() = Some(e.to_string());
            for s in staged {
                let _ = s.reply.send(Err(StoreError::Io(e.to_string())));
            }
            return;
        }
        if shared.failing.read().unwrap().is_some() {
            *shared.failing.write().unwrap() = None;
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
            st.history_bytes += e.size;
            st.history.push_back(s.event.clone());
            let _ = shared.events.send(s.event.clone());
            let _ = s.reply.send(Ok(s.event.object.clone()));
        }
        st.rev = rev;
        st.history_floor = new_floor;
        while st.history.front().is_some_and(|e| e.rev <= new_floor) {
            if let Some(e) = st.history.pop_front() {
                st.history_bytes -= e.size;
            }
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

    /// An object nested `depth` levels (the request parser's limit is 128).
    fn deep(depth: usize) -> Value {
        let mut v = json!("bottom");
        for _ in 0..depth {
            v = json!({"x": v});
        }
        json!({"metadata": {"name": "deep", "namespace": "default"}, "data": v})
    }

    #[tokio::test]
    async fn an_object_as_deep_as_the_parser_allows_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // As deep as a request body can be: the parser's limit, less the levels above `data`.
        let text = serde_json::to_string(&deep(126)).unwrap();
        let admitted: Value = serde_json::from_str(&text).expect("parses as a request would");
        {
            let s = Store::open(&path, 100).unwrap();
            s.create(Key::new("configmaps", "default", "deep"), admitted).await.unwrap();
            s.close();
        }
        let s = Store::open(&path, 100).expect("the store opens again");
        assert!(s.get(&Key::new("configmaps", "default", "deep")).is_some());
        assert_eq!(s.watch(0).unwrap().backlog.len(), 1);
    }

    #[test]
    fn an_empty_or_foreign_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        std::fs::write(&path, b"").unwrap();
        let e = Store::open(&path, 100).err().expect("refused").to_string();
        assert!(e.contains("is empty") && e.contains("move it aside"), "{e}");
        std::fs::write(&path, b"not a store at all, but some text someone put here").unwrap();
        let e = Store::open(&path, 100).err().expect("refused").to_string();
        assert!(e.contains("not a weft store") && e.contains("move it aside"), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"not a store at all, but some text someone put here",
            "left as it was"
        );
    }

    #[tokio::test]
    async fn a_row_that_does_not_parse_is_set_aside_and_the_rest_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open(&path, 100).unwrap();
            s.create(Key::new("pods", "default", "a"), obj("a")).await.unwrap();
            s.close();
        }
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(OBJECTS).unwrap().insert("pods/default/bad", b"{not json".as_slice()).unwrap();
            w.open_table(EVENTS).unwrap().insert(2u64, b"garbage".as_slice()).unwrap();
            w.commit().unwrap();
        }
        let s = Store::open(&path, 100).unwrap();
        assert_eq!(s.set_aside(), 2);
        assert_eq!(s.list("pods", None).0.len(), 1);
        // No watch resumes across the hole.
        assert!(matches!(s.watch(1), Err(StoreError::Gone { .. })));
        s.close();
        let s = Store::open(&path, 100).unwrap();
        assert_eq!(s.set_aside(), 0, "set aside once, kept in its table");
    }

    #[tokio::test]
    async fn history_is_bounded_in_bytes_and_objects_in_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db"), 1_000_000).unwrap();
        let big = |name: &str| json!({"metadata": {"name": name}, "data": {"x": "y".repeat(1 << 20)}});
        let n = HISTORY_BYTES / (1 << 20) + 20;
        for i in 0..n {
            s.create(Key::new("configmaps", "default", &format!("c{i}")), big(&format!("c{i}"))).await.unwrap();
        }
        {
            let st = s.shared.state.read().unwrap();
            assert!(st.history_bytes <= HISTORY_BYTES, "{}", st.history_bytes);
            assert!(st.history.len() < n, "old events went");
            assert_eq!(st.history_bytes, st.history.iter().map(|e| e.size).sum::<usize>());
        }
        let huge = json!({"metadata": {"name": "huge"}, "data": {"x": "y".repeat(MAX_OBJECT_BYTES)}});
        let e = s.create(Key::new("configmaps", "default", "huge"), huge).await.unwrap_err();
        assert!(matches!(e, StoreError::TooBig { .. }), "{e}");
        assert!(matches!(s.watch(s.revision() + 5), Err(StoreError::TooLarge { .. })));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        /// Damaged bytes anywhere in a store file: open answers (an error or a store), never panics.
        #[test]
        fn open_never_panics_on_damaged_bytes(flips in proptest::collection::vec((0usize..1_000_000, proptest::prelude::any::<u8>()), 1..8), cut in proptest::option::of(0usize..1_000_000)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let s = Store::open(&path, 100).unwrap();
                for i in 0..20 {
                    s.create(Key::new("pods", "default", &format!("p{i}")), obj(&format!("p{i}"))).await.unwrap();
                }
                s.close();
            });
            let mut bytes = std::fs::read(&path).unwrap();
            for (at, b) in flips {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            if let Some(c) = cut {
                let n = bytes.len();
                bytes.truncate(c % n);
            }
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(s) = Store::open(&path, 100) {
                s.close();
            }
        }
    }

    /// Run by `a_full_disk_makes_the_store_unready` in a child whose file size limit
    /// makes the disk "full"; not on its own.
    #[tokio::test]
    #[ignore]
    async fn child_with_a_full_disk() {
        let Ok(dir) = std::env::var("WEFT_STORE_FULL_DIR") else { return };
        let s = Store::open(&Path::new(&dir).join("db"), 100).unwrap();
        assert!(s.failing().is_none());
        let mut failed = None;
        for i in 0..200 {
            let o = json!({"metadata": {"name": format!("c{i}")}, "data": {"x": "y".repeat(200_000)}});
            if let Err(e) = s.create(Key::new("configmaps", "default", &format!("c{i}")), o).await {
                failed = Some((i, e));
                break;
            }
        }
        let (i, e) = failed.expect("the disk filled up");
        assert!(matches!(e, StoreError::Io(_)), "{e}");
        assert!(s.failing().is_some(), "not ready while the store cannot write");
        assert!(s.get(&Key::new("configmaps", "default", &format!("c{i}"))).is_none(), "a failed write is not shown");
        println!("CHILD-OK after {i} writes");
    }

    #[test]
    fn a_full_disk_makes_the_store_unready() {
        let dir = tempfile::tempdir().unwrap();
        // A file size limit stands in for a full disk; SIGXFSZ ignored so writes fail with EFBIG.
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; exec prlimit --fsize=8000000 \"$0\" tests::child_with_a_full_disk --exact --ignored --nocapture")
            .arg(&exe)
            .env("WEFT_STORE_FULL_DIR", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("CHILD-OK"), "{text}");
    }
}
