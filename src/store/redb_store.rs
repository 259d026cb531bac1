//! The backend of [`Store`]: a redb file plus the lease journal.
//!
//! Leases are held in memory and every change is appended to the lease journal
//! (`leases.<gen>.journal`, see `journal.rs`) with one `fdatasync` per batch. The redb table
//! `leases` is a snapshot: it holds the lease set as of the start of journal
//! `meta[lease_snapshot_gen]`. Opening loads the snapshot and replays every journal from that
//! generation on. When the journal has grown past a few times the live set, a background
//! compaction starts a fresh journal (generation + 1), writes the leases changed since the
//! last snapshot into redb together with the new generation in one transaction, and then
//! deletes the older journals. A crash at any point leaves either the old snapshot with all
//! journals from its generation on, or the new snapshot (older journals are ignored and
//! removed on the next open).
//!
//! Everything else is in redb, written in immediate-durability transactions.
//!
//! Tables (values are JSON text):
//! - `meta`: `&str -> u64` (`schema_version`, `last_event_seq`, `lease_snapshot_gen`)
//! - `leases`: MAC -> [`Lease`] (the snapshot)
//! - `nodes`: MAC -> [`NodeRecord`]
//! - `events`: seq -> [`Event`]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, WriteTransaction,
};
use serde::de::DeserializeOwned;

use super::journal::{self, AppendError, Change, Journal};
use super::tokens::{BootToken, TokenCheck, TokenUse, check_token};
use super::{
    DEFAULT_MAX_EVENTS, Event, HISTORY_CAP, Lease, NodeRecord, Op, SCHEMA_VERSION, Store,
    StoreError, Transition, decode, encode, now_millis,
};
use crate::status::NodeState;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<&str, &str> = TableDefinition::new("leases");
/// Schema 1's IP index; dropped by the migration to schema 2 (the index lives in memory).
const LEASE_IPS_V1: TableDefinition<&str, &str> = TableDefinition::new("lease_ips");
const NODES: TableDefinition<&str, &str> = TableDefinition::new("nodes");
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");
const BOOT_TOKENS: TableDefinition<&str, &str> = TableDefinition::new("boot_tokens");
/// MAC -> unix milliseconds of the approval.
const APPROVED: TableDefinition<&str, u64> = TableDefinition::new("approved");

const KEY_SCHEMA_VERSION: &str = "schema_version";
const KEY_LAST_EVENT_SEQ: &str = "last_event_seq";
const KEY_LEASE_SNAPSHOT_GEN: &str = "lease_snapshot_gen";

/// Tuning for [`RedbStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The event log keeps at most this many events; the oldest are deleted first.
    pub max_events: u64,
    /// The lease journal is compacted once it holds more than `compact_min_ops` changes and
    /// more than `compact_factor` times the number of live leases (see the module docs).
    pub compact_min_ops: u64,
    pub compact_factor: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_events: DEFAULT_MAX_EVENTS,
            compact_min_ops: 100_000,
            compact_factor: 4,
        }
    }
}

/// [`Store`] on a redb file and the lease journal beside it.
pub struct RedbStore {
    inner: Arc<Inner>,
    /// The running or last background compaction.
    compactor: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    dir: PathBuf,
    max_events: u64,
    compact_min_ops: u64,
    compact_factor: u64,
    leases: Mutex<LeaseSet>,
    compacting: AtomicBool,
}

/// The live leases with their IP index. B-trees, not hash maps: a hash map doubling at
/// 60000 leases stalled the commit path (and with it the ACKs) for 20-40 ms.
#[derive(Default)]
struct LeaseMap {
    by_mac: BTreeMap<String, Lease>,
    by_ip: BTreeMap<Ipv4Addr, String>,
}

/// The live leases and the journal that makes their changes durable.
struct LeaseSet {
    map: LeaseMap,
    journal: Journal,
    /// Set when a failed append could not be rolled back: no more lease writes.
    poisoned: Option<String>,
    /// MACs changed since the snapshot was taken (what the next compaction writes).
    dirty: BTreeSet<String>,
    /// Changes appended since the journal was started.
    journaled: u64,
    /// Frame buffer, reused.
    buf: Vec<u8>,
}

impl LeaseMap {
    /// Inserts or replaces `lease`; returns the MAC's previous lease. Fails if the IP is held
    /// by another MAC, changing nothing.
    fn put(&mut self, lease: Lease) -> Result<Option<Lease>, StoreError> {
        if let Some(holder) = self.by_ip.get(&lease.ip)
            && *holder != lease.mac
        {
            return Err(StoreError::Conflict {
                ip: lease.ip,
                held_by: holder.clone(),
            });
        }
        let ip = lease.ip;
        let mac = lease.mac.clone();
        let old = self.by_mac.insert(mac.clone(), lease);
        if let Some(old) = &old
            && old.ip != ip
            && self.by_ip.get(&old.ip) == Some(&mac)
        {
            self.by_ip.remove(&old.ip);
        }
        self.by_ip.insert(ip, mac);
        Ok(old)
    }

    fn delete(&mut self, mac: &str) -> Option<Lease> {
        let old = self.by_mac.remove(mac)?;
        if self.by_ip.get(&old.ip).is_some_and(|m| m == mac) {
            self.by_ip.remove(&old.ip);
        }
        Some(old)
    }

    /// Puts `mac` back to `old` (undo of a put or delete).
    fn restore(&mut self, mac: &str, old: Option<Lease>) {
        self.delete(mac);
        if let Some(old) = old {
            // Undo runs newest first, so the IP is free again.
            let _ = self.put(old);
        }
    }

    /// Applies a replayed change; returns the MAC it touched.
    fn apply_change(&mut self, change: Change) -> Result<String, StoreError> {
        match change {
            Change::Put(l) => {
                let mac = l.mac.clone();
                self.put(l)?;
                Ok(mac)
            }
            Change::Delete(mac) => {
                self.delete(&mac);
                Ok(mac)
            }
        }
    }

    /// The current value of each MAC, sorted by MAC (what a snapshot writes).
    fn snapshot_of(&self, macs: BTreeSet<String>) -> Vec<(String, Option<Lease>)> {
        // A BTreeSet iterates in MAC order.
        macs.into_iter()
            .map(|mac| {
                let lease = self.by_mac.get(&mac).cloned();
                (mac, lease)
            })
            .collect()
    }
}

impl LeaseSet {
    fn needs_compaction(&self, min_ops: u64, factor: u64) -> bool {
        self.journaled > min_ops
            && self.journaled > factor.saturating_mul(self.map.by_mac.len() as u64)
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .field("max_events", &self.inner.max_events)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<LeaseSet>) -> Result<MutexGuard<'_, LeaseSet>, StoreError> {
    m.lock()
        .map_err(|_| StoreError::Db("lease state lock poisoned by a panic".to_string()))
}

impl RedbStore {
    /// Opens or creates the database file at `path` (its directory must exist) and the lease
    /// journals beside it.
    ///
    /// Fails with [`StoreError::Locked`] if another process (or another handle in this
    /// process) has it open, and with [`StoreError::SchemaTooNew`] if it was written by a newer
    /// slipway; the file is not modified in that case.
    pub fn open_with(path: &Path, options: Options) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_path_buf()),
            other => StoreError::Db(format!("opening {}: {other}", path.display())),
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        check_schema(&db, path)?;
        let leases = load_leases(&db, &dir)?;
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                dir,
                max_events: options.max_events,
                compact_min_ops: options.compact_min_ops,
                compact_factor: options.compact_factor,
                leases: Mutex::new(leases),
                compacting: AtomicBool::new(false),
            }),
            compactor: Mutex::new(None),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Compacts the lease journal now, in the calling thread (waits for a running background
    /// compaction first).
    pub fn compact(&self) -> Result<(), StoreError> {
        self.wait_compaction();
        self.inner.compact()
    }

    fn wait_compaction(&self) {
        let handle = self
            .compactor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Starts a background compaction unless one is running.
    fn start_compaction(&self) {
        if self.inner.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut slot = self
            .compactor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(done) = slot.take() {
            let _ = done.join();
        }
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("store-compact".into())
            .spawn(move || {
                if let Err(e) = inner.compact() {
                    tracing::error!(error = %e, "lease journal compaction failed; will retry");
                }
                inner.compacting.store(false, Ordering::Release);
            });
        match spawned {
            Ok(h) => *slot = Some(h),
            Err(e) => {
                self.inner.compacting.store(false, Ordering::Release);
                tracing::error!(error = %e, "cannot start lease journal compaction");
            }
        }
    }

    /// Applies lease ops (`ops[i]` for `i` in `idx`) to the live set and journals them in one
    /// frame. Per op: `Ok(changed)` (for a delete: whether the lease existed).
    fn apply_leases(
        &self,
        ops: &[Op],
        idx: &[usize],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        let mut set = lock(&self.inner.leases)?;
        if let Some(why) = &set.poisoned {
            return Err(StoreError::Db(why.clone()));
        }
        let mut buf = std::mem::take(&mut set.buf);
        journal::begin_frame(&mut buf);
        let mut undo: Vec<(String, Option<Lease>)> = Vec::new();
        let mut results = Vec::with_capacity(idx.len());
        for &i in idx {
            let mark = buf.len();
            results.push(match &ops[i] {
                Op::PutLease(l) => journal::encode_put(l, &mut buf)
                    .and_then(|()| set.map.put(l.clone()))
                    .map(|old| {
                        undo.push((l.mac.clone(), old));
                        true
                    })
                    .inspect_err(|_| buf.truncate(mark)),
                Op::DeleteLease(mac) => match journal::encode_delete(mac, &mut buf) {
                    Err(e) => Err(e),
                    Ok(()) => match set.map.delete(mac) {
                        Some(old) => {
                            undo.push((mac.clone(), Some(old)));
                            Ok(true)
                        }
                        None => {
                            buf.truncate(mark);
                            Ok(false)
                        }
                    },
                },
                _ => unreachable!("apply_leases gets lease ops only"),
            });
        }
        if !journal::frame_is_empty(&buf) {
            let appended = set.journal.append(&mut buf);
            if let Err(e) = appended {
                for (mac, old) in undo.into_iter().rev() {
                    set.map.restore(&mac, old);
                }
                set.buf = buf;
                return Err(match e {
                    AppendError::Clean(e) => e,
                    AppendError::Poisoned(why) => {
                        tracing::error!(error = %why, "lease journal unusable; lease writes refused until restart");
                        set.poisoned = Some(why.clone());
                        StoreError::Db(why)
                    }
                });
            }
            set.journaled += undo.len() as u64;
            for (mac, _) in undo {
                set.dirty.insert(mac);
            }
        }
        set.buf = buf;
        let compact = set.needs_compaction(self.inner.compact_min_ops, self.inner.compact_factor);
        drop(set);
        if compact {
            self.start_compaction();
        }
        Ok(results)
    }
}

impl Drop for RedbStore {
    /// Waits for a running compaction, so the database is closed when the store is gone.
    fn drop(&mut self) {
        self.wait_compaction();
    }
}

impl Inner {
    /// Starts journal generation + 1, writes the leases changed before it into the redb
    /// snapshot with that generation, then deletes the older journals.
    fn compact(&self) -> Result<(), StoreError> {
        let generation = lock(&self.leases)?.journal.generation + 1;
        // Created outside the lock (only compaction rotates, and one runs at a time).
        let fresh = match Journal::create(&self.dir, generation) {
            Ok(j) => j,
            Err(e) => {
                // Retry only after another threshold's worth of changes.
                lock(&self.leases)?.journaled = 0;
                return Err(e);
            }
        };
        let snapshot = {
            let mut set = lock(&self.leases)?;
            set.journal = fresh;
            set.journaled = 0;
            let dirty = std::mem::take(&mut set.dirty);
            let set = set;
            // Cloning the changed leases is the only work done under the lock.
            set.map.snapshot_of(dirty)
        };
        if let Err(e) = write_snapshot(&self.db, &snapshot, generation) {
            let mut set = lock(&self.leases)?;
            set.dirty.extend(snapshot.into_iter().map(|(mac, _)| mac));
            return Err(e);
        }
        remove_journals_before(&self.dir, generation)?;
        tracing::debug!(
            generation,
            changed = snapshot.len(),
            "lease journal compacted"
        );
        Ok(())
    }

    fn read_json<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &str>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(def)?;
        let raw = table.get(key)?;
        raw.map(|g| decode(def.name(), key, g.value())).transpose()
    }

    fn read_all_json<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &str>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(def)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode(def.name(), k.value(), v.value())?);
        }
        Ok(out)
    }

    fn collect_events<'a>(
        iter: impl Iterator<
            Item = Result<
                (
                    redb::AccessGuard<'a, u64>,
                    redb::AccessGuard<'a, &'static str>,
                ),
                redb::StorageError,
            >,
        >,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        for entry in iter.take(limit) {
            let (k, v) = entry?;
            out.push(decode(EVENTS.name(), k.value(), v.value())?);
        }
        Ok(out)
    }
}

/// Writes `changes` into the snapshot table and records `generation` as its journal
/// generation, in one durable transaction.
fn write_snapshot(
    db: &Database,
    changes: &[(String, Option<Lease>)],
    generation: u64,
) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(LEASES)?;
        for (mac, lease) in changes {
            match lease {
                Some(l) => {
                    let value = encode(LEASES.name(), mac, l)?;
                    table.insert(mac.as_str(), value.as_str())?;
                }
                None => {
                    table.remove(mac.as_str())?;
                }
            }
        }
        txn.open_table(META)?
            .insert(KEY_LEASE_SNAPSHOT_GEN, generation)?;
    }
    txn.commit()?;
    Ok(())
}

fn remove_journals_before(dir: &Path, generation: u64) -> Result<(), StoreError> {
    for (g, path) in journal::list(dir)? {
        if g < generation {
            std::fs::remove_file(&path).map_err(StoreError::Io)?;
        }
    }
    Ok(())
}

/// Reads the stored schema version without writing anything; `None` for a fresh file.
fn stored_schema_version(db: &Database, path: &Path) -> Result<Option<u32>, StoreError> {
    let txn = db.begin_read()?;
    let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
    if !names.iter().any(|n| n == META.name()) {
        if names.is_empty() {
            return Ok(None);
        }
        return Err(StoreError::Corrupt(format!(
            "{} has tables {names:?} but no `meta` table; refusing to guess its schema",
            path.display()
        )));
    }
    let meta = txn.open_table(META)?;
    let raw = meta
        .get(KEY_SCHEMA_VERSION)?
        .map(|g| g.value())
        .ok_or_else(|| StoreError::Corrupt(format!("meta[{KEY_SCHEMA_VERSION}]: missing")))?;
    let version = u32::try_from(raw).map_err(|_| {
        StoreError::Corrupt(format!("meta[{KEY_SCHEMA_VERSION}]: {raw} out of range"))
    })?;
    Ok(Some(version))
}

fn check_schema(db: &Database, path: &Path) -> Result<(), StoreError> {
    let found = stored_schema_version(db, path)?;
    if let Some(found) = found
        && found > SCHEMA_VERSION
    {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    let txn = db.begin_write()?;
    // Create every table so read transactions never see a missing one.
    txn.open_table(LEASES)?;
    txn.open_table(NODES)?;
    txn.open_table(EVENTS)?;
    txn.open_table(BOOT_TOKENS)?;
    txn.open_table(APPROVED)?;
    if let Some(from) = found {
        migrate(&txn, from)?;
        tracing::info!(from, to = SCHEMA_VERSION, path = %path.display(), "migrated state schema");
    }
    txn.open_table(META)?
        .insert(KEY_SCHEMA_VERSION, u64::from(SCHEMA_VERSION))?;
    txn.commit()?;
    Ok(())
}

/// Upgrades the layout from schema `from` to [`SCHEMA_VERSION`] inside `txn`.
///
/// 1 -> 2: the `leases` table becomes the journal snapshot of generation 0 (no journal
/// exists yet, so it is the whole lease set); the `lease_ips` index is dropped (it is kept in
/// memory now). Older slipway builds refuse schema 2, so they cannot miss journaled leases.
/// 2 -> 3: adds `boot_tokens`; 3 -> 4: adds `approved` (created with the other tables above).
fn migrate(txn: &WriteTransaction, from: u32) -> Result<(), StoreError> {
    debug_assert!(from < SCHEMA_VERSION);
    if from <= 1 {
        txn.delete_table(LEASE_IPS_V1)?;
    }
    Ok(())
}

/// Loads the snapshot, replays the journals from its generation on, starts a fresh journal
/// and folds what was replayed into the snapshot (so nothing is ever appended after a torn
/// tail).
fn load_leases(db: &Database, dir: &Path) -> Result<LeaseSet, StoreError> {
    let mut map = LeaseMap::default();
    let snapshot_gen;
    {
        let txn = db.begin_read()?;
        snapshot_gen = txn
            .open_table(META)?
            .get(KEY_LEASE_SNAPSHOT_GEN)?
            .map_or(0, |g| g.value());
        for entry in txn.open_table(LEASES)?.iter()? {
            let (k, v) = entry?;
            let lease: Lease = decode(LEASES.name(), k.value(), v.value())?;
            if lease.mac != k.value() {
                return Err(StoreError::Corrupt(format!(
                    "leases[{}] holds the lease of {}",
                    k.value(),
                    lease.mac
                )));
            }
            if let Some(other) = map.by_ip.insert(lease.ip, lease.mac.clone()) {
                return Err(StoreError::Corrupt(format!(
                    "leases: {} is leased to both {other} and {}",
                    lease.ip, lease.mac
                )));
            }
            map.by_mac.insert(lease.mac.clone(), lease);
        }
    }

    let journals = journal::list(dir)?;
    let live: Vec<&(u64, PathBuf)> = journals
        .iter()
        .filter(|(g, _)| *g >= snapshot_gen)
        .collect();
    // Journals always start at the snapshot's generation and follow each other: a gap means
    // a journal file was lost, and with it leases that were acknowledged.
    if (snapshot_gen > 0 || !live.is_empty()) && live.first().map(|(g, _)| *g) != Some(snapshot_gen)
    {
        return Err(StoreError::Corrupt(format!(
            "lease journal {} is missing from {}; refusing to start without the leases it \
             recorded",
            journal::file_name(snapshot_gen),
            dir.display()
        )));
    }
    for w in live.windows(2) {
        if w[1].0 != w[0].0 + 1 {
            return Err(StoreError::Corrupt(format!(
                "lease journal {} is missing from {}",
                journal::file_name(w[0].0 + 1),
                dir.display()
            )));
        }
    }

    let mut dirty = BTreeSet::new();
    for (g, path) in &live {
        let replay = journal::replay(path, *g, |change| {
            let mac = map
                .apply_change(change)
                .map_err(|e| StoreError::Corrupt(format!("replaying {}: {e}", path.display())))?;
            dirty.insert(mac);
            Ok(())
        })?;
        if replay.ignored > 0 {
            tracing::warn!(
                journal = %path.display(),
                frames = replay.frames,
                ignored_bytes = replay.ignored,
                "lease journal has a torn tail (a write interrupted by a crash); ignored"
            );
        }
    }
    let generation = live.last().map_or(snapshot_gen, |(g, _)| g + 1);
    let journal = Journal::create(dir, generation)?;
    if generation != snapshot_gen || !dirty.is_empty() {
        write_snapshot(db, &map.snapshot_of(dirty), generation)?;
    }
    remove_journals_before(dir, generation)?;
    Ok(LeaseSet {
        map,
        journal,
        poisoned: None,
        dirty: BTreeSet::new(),
        journaled: 0,
        buf: Vec::new(),
    })
}

impl Store for RedbStore {
    fn schema_version(&self) -> Result<u32, StoreError> {
        stored_schema_version(&self.inner.db, &self.inner.path)?
            .ok_or_else(|| StoreError::Corrupt(format!("meta[{KEY_SCHEMA_VERSION}]: missing")))
    }

    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let ops = [Op::PutLease(lease.clone())];
        self.apply_leases(&ops, &[0])?
            .pop()
            .expect("one result")
            .map(|_| ())
    }

    fn get_lease(&self, mac: &str) -> Result<Option<Lease>, StoreError> {
        Ok(lock(&self.inner.leases)?.map.by_mac.get(mac).cloned())
    }

    fn lease_by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        let set = lock(&self.inner.leases)?;
        let map = &set.map;
        Ok(map
            .by_ip
            .get(&ip)
            .and_then(|mac| map.by_mac.get(mac))
            .cloned())
    }

    fn delete_lease(&self, mac: &str) -> Result<bool, StoreError> {
        let ops = [Op::DeleteLease(mac.to_string())];
        self.apply_leases(&ops, &[0])?.pop().expect("one result")
    }

    fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(lock(&self.inner.leases)?
            .map
            .by_mac
            .values()
            .cloned()
            .collect())
    }

    fn get_node(&self, mac: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.inner.read_json(NODES, mac)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.inner.read_all_json(NODES)
    }

    fn record_transition(
        &self,
        mac: &str,
        hostname: Option<&str>,
        state: NodeState,
        detail: Option<&str>,
        at_millis: u64,
    ) -> Result<NodeRecord, StoreError> {
        let txn = self.inner.db.begin_write()?;
        let record = record_transition_in(&txn, mac, hostname, state, detail, at_millis)?;
        txn.commit()?;
        Ok(record)
    }

    fn delete_node(&self, mac: &str) -> Result<bool, StoreError> {
        let txn = self.inner.db.begin_write()?;
        let existed = txn.open_table(NODES)?.remove(mac)?.is_some();
        txn.commit()?;
        Ok(existed)
    }

    fn append_event(
        &self,
        kind: &str,
        mac: Option<&str>,
        message: &str,
    ) -> Result<Event, StoreError> {
        let txn = self.inner.db.begin_write()?;
        let event = append_event_in(&txn, self.inner.max_events, kind, mac, message)?;
        txn.commit()?;
        Ok(event)
    }

    fn apply(&self, ops: &[Op]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let (lease_idx, other_idx): (Vec<usize>, Vec<usize>) =
            (0..ops.len()).partition(|&i| matches!(ops[i], Op::PutLease(_) | Op::DeleteLease(_)));
        let mut results: Vec<Result<(), StoreError>> = (0..ops.len()).map(|_| Ok(())).collect();
        // Leases first: if their journal write fails, nothing at all was committed.
        if !lease_idx.is_empty() {
            for (&i, r) in lease_idx.iter().zip(self.apply_leases(ops, &lease_idx)?) {
                results[i] = r.map(|_| ());
            }
        }
        if other_idx.is_empty() {
            return Ok(results);
        }
        // The other writes are one redb transaction; if it fails after the leases were
        // journaled, its ops report the error (they wrote nothing) and the leases stand.
        match self.apply_records(ops, &other_idx) {
            Ok(rs) => {
                for (&i, r) in other_idx.iter().zip(rs) {
                    results[i] = r;
                }
            }
            Err(e) if lease_idx.is_empty() => return Err(e),
            Err(e) => {
                let msg = e.to_string();
                for &i in &other_idx {
                    results[i] = Err(StoreError::Db(msg.clone()));
                }
            }
        }
        Ok(results)
    }

    fn events_since(&self, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let range = events.range::<u64>((Bound::Excluded(after_seq), Bound::Unbounded))?;
        Inner::collect_events(range, limit)
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let mut out = Inner::collect_events(events.iter()?.rev(), limit)?;
        out.reverse();
        Ok(out)
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        let txn = self.inner.db.begin_read()?;
        Ok(txn.open_table(EVENTS)?.len()?)
    }

    fn issue_boot_token(&self, token: &BootToken) -> Result<Event, StoreError> {
        let txn = self.inner.db.begin_write()?;
        let value = encode(BOOT_TOKENS.name(), &token.mac, token)?;
        txn.open_table(BOOT_TOKENS)?
            .insert(token.mac.as_str(), value.as_str())?;
        let event = append_event_in(
            &txn,
            self.inner.max_events,
            "secret.issued",
            Some(&token.mac),
            "one-time boot token issued (install script)",
        )?;
        txn.commit()?;
        Ok(event)
    }

    fn boot_token(&self, mac: &str) -> Result<Option<BootToken>, StoreError> {
        self.inner.read_json(BOOT_TOKENS, mac)
    }

    fn use_boot_token(
        &self,
        mac: &str,
        hash: &str,
        usage: TokenUse,
        now_millis: u64,
    ) -> Result<TokenCheck, StoreError> {
        let txn = self.inner.db.begin_write()?;
        let stored: Option<BootToken> = {
            let table = txn.open_table(BOOT_TOKENS)?;
            let raw = table.get(mac)?;
            raw.map(|g| decode(BOOT_TOKENS.name(), mac, g.value()))
                .transpose()?
        };
        let check = check_token(stored.as_ref(), hash, usage, now_millis);
        match (&check, usage) {
            (TokenCheck::Valid(t), TokenUse::Config) => {
                let spent = BootToken {
                    config_fetched_at: Some(now_millis),
                    ..t.clone()
                };
                let value = encode(BOOT_TOKENS.name(), mac, &spent)?;
                txn.open_table(BOOT_TOKENS)?.insert(mac, value.as_str())?;
            }
            (TokenCheck::Valid(_), TokenUse::Report) => {}
            (refused, usage) => {
                let what = match usage {
                    TokenUse::Config => "config fetch",
                    TokenUse::Report => "report",
                };
                append_event_in(
                    &txn,
                    self.inner.max_events,
                    "token.refused",
                    Some(mac),
                    &format!("{what} refused: {}", refused.reason()),
                )?;
            }
        }
        txn.commit()?;
        Ok(check)
    }

    fn approve_machine(&self, mac: &str) -> Result<(), StoreError> {
        let txn = self.inner.db.begin_write()?;
        txn.open_table(APPROVED)?.insert(mac, now_millis())?;
        append_event_in(
            &txn,
            self.inner.max_events,
            "node.approved",
            Some(mac),
            "approved by the operator: served as a worker",
        )?;
        txn.commit()?;
        Ok(())
    }

    fn approved_machines(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(APPROVED)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(entry?.0.value().to_string());
        }
        Ok(out)
    }

    fn revoke_boot_token(&self, mac: &str) -> Result<bool, StoreError> {
        let txn = self.inner.db.begin_write()?;
        let existed = txn.open_table(BOOT_TOKENS)?.remove(mac)?.is_some();
        txn.commit()?;
        Ok(existed)
    }
}

impl RedbStore {
    /// The node and event writes of a batch (`ops[i]` for `i` in `idx`), one transaction.
    fn apply_records(
        &self,
        ops: &[Op],
        idx: &[usize],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let txn = self.inner.db.begin_write()?;
        let mut results = Vec::with_capacity(idx.len());
        for &i in idx {
            results.push(match &ops[i] {
                Op::Transition {
                    mac,
                    hostname,
                    state,
                    detail,
                    at_millis,
                    forward_only,
                } => {
                    let current = if *forward_only {
                        current_state_in(&txn, mac)?
                    } else {
                        None
                    };
                    // `failed` is past everything: a failed node's next DHCP or TFTP
                    // step does not hide the failure; only explicit transitions (a report,
                    // the operator's reinstall) move it.
                    if current.is_some_and(|c| c == NodeState::Failed || c >= *state) {
                        Ok(())
                    } else {
                        record_transition_in(
                            &txn,
                            mac,
                            hostname.as_deref(),
                            *state,
                            detail.as_deref(),
                            *at_millis,
                        )
                        .map(|_| ())
                    }
                }
                Op::Event { kind, mac, message } => {
                    append_event_in(&txn, self.inner.max_events, kind, mac.as_deref(), message)
                        .map(|_| ())
                }
                Op::PutLease(_) | Op::DeleteLease(_) => unreachable!("lease ops are journaled"),
            });
        }
        txn.commit()?;
        Ok(results)
    }
}

// Transaction-level redb writes, shared by the single-write methods and `apply`.

fn current_state_in(txn: &WriteTransaction, mac: &str) -> Result<Option<NodeState>, StoreError> {
    let nodes = txn.open_table(NODES)?;
    let record: Option<NodeRecord> = nodes
        .get(mac)?
        .map(|g| decode(NODES.name(), mac, g.value()))
        .transpose()?;
    Ok(record.map(|r| r.state))
}

fn record_transition_in(
    txn: &WriteTransaction,
    mac: &str,
    hostname: Option<&str>,
    state: NodeState,
    detail: Option<&str>,
    at_millis: u64,
) -> Result<NodeRecord, StoreError> {
    let mut nodes = txn.open_table(NODES)?;
    let existing: Option<NodeRecord> = nodes
        .get(mac)?
        .map(|g| decode(NODES.name(), mac, g.value()))
        .transpose()?;
    let mut record = existing.unwrap_or_else(|| NodeRecord {
        mac: mac.to_string(),
        hostname: None,
        state,
        detail: None,
        updated_at: at_millis,
        history: Vec::new(),
    });
    if let Some(h) = hostname {
        record.hostname = Some(h.to_string());
    }
    record.state = state;
    record.detail = detail.map(str::to_string);
    record.updated_at = at_millis;
    record.history.push(Transition {
        state,
        at: at_millis,
        detail: detail.map(str::to_string),
    });
    if record.history.len() > HISTORY_CAP {
        let excess = record.history.len() - HISTORY_CAP;
        record.history.drain(..excess);
    }
    let value = encode(NODES.name(), mac, &record)?;
    nodes.insert(mac, value.as_str())?;
    Ok(record)
}

fn append_event_in(
    txn: &WriteTransaction,
    max_events: u64,
    kind: &str,
    mac: Option<&str>,
    message: &str,
) -> Result<Event, StoreError> {
    let mut meta = txn.open_table(META)?;
    let mut events = txn.open_table(EVENTS)?;
    // The meta counter survives retention emptying the table; the table's last key
    // covers databases where the counter lags. Either way a seq is never reused.
    let last_meta = meta.get(KEY_LAST_EVENT_SEQ)?.map_or(0, |g| g.value());
    let last_table = events.last()?.map_or(0, |(k, _)| k.value());
    let seq = last_meta
        .max(last_table)
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("events: sequence number exhausted".to_string()))?;
    let event = Event {
        seq,
        at: now_millis(),
        kind: kind.to_string(),
        mac: mac.map(str::to_string),
        message: message.to_string(),
    };
    let value = encode(EVENTS.name(), seq, &event)?;
    events.insert(seq, value.as_str())?;
    meta.insert(KEY_LAST_EVENT_SEQ, seq)?;

    let len = events.len()?;
    if len > max_events {
        let excess = usize::try_from(len - max_events).unwrap_or(usize::MAX);
        // First retained key: everything strictly below it goes.
        let keep_from = match events.iter()?.nth(excess) {
            Some(entry) => entry?.0.value(),
            None => seq + 1,
        };
        events.retain_in(..keep_from, |_, _| false)?;
    }
    Ok(event)
}
