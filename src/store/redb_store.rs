//! The redb backend of [`Store`].
//!
//! Tables (values are JSON text):
//! - `meta`: `&str -> u64` (`schema_version`, `last_event_seq`)
//! - `leases`: MAC -> [`Lease`]
//! - `lease_ips`: IP (dotted text) -> MAC, always updated in the same transaction as `leases`
//! - `nodes`: MAC -> [`NodeRecord`]
//! - `events`: seq -> [`Event`]

use std::net::Ipv4Addr;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, WriteTransaction,
};
use serde::de::DeserializeOwned;

use super::{
    DEFAULT_MAX_EVENTS, Event, HISTORY_CAP, Lease, NodeRecord, Op, SCHEMA_VERSION, Store,
    StoreError, Transition, decode, encode, now_millis,
};
use crate::status::NodeState;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<&str, &str> = TableDefinition::new("leases");
const LEASE_IPS: TableDefinition<&str, &str> = TableDefinition::new("lease_ips");
const NODES: TableDefinition<&str, &str> = TableDefinition::new("nodes");
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");

const KEY_SCHEMA_VERSION: &str = "schema_version";
const KEY_LAST_EVENT_SEQ: &str = "last_event_seq";

/// Tuning for [`RedbStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The event log keeps at most this many events; the oldest are deleted first.
    pub max_events: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_events: DEFAULT_MAX_EVENTS,
        }
    }
}

/// [`Store`] on a single redb file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    max_events: u64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("max_events", &self.max_events)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens or creates the database file at `path` (its directory must exist).
    ///
    /// Fails with [`StoreError::Locked`] if another process (or another handle in this
    /// process) has it open, and with [`StoreError::SchemaTooNew`] if it was written by a newer
    /// slipway; the file is not modified in that case.
    pub fn open_with(path: &Path, options: Options) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_path_buf()),
            other => StoreError::Db(format!("opening {}: {other}", path.display())),
        })?;
        let store = RedbStore {
            db,
            path: path.to_path_buf(),
            max_events: options.max_events,
        };
        store.check_schema()?;
        Ok(store)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the stored schema version without writing anything; `None` for a fresh file.
    fn stored_schema_version(&self) -> Result<Option<u32>, StoreError> {
        let txn = self.db.begin_read()?;
        let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
        if !names.iter().any(|n| n == META.name()) {
            if names.is_empty() {
                return Ok(None);
            }
            return Err(StoreError::Corrupt(format!(
                "{} has tables {names:?} but no `meta` table; refusing to guess its schema",
                self.path.display()
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

    fn check_schema(&self) -> Result<(), StoreError> {
        let found = self.stored_schema_version()?;
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
        let txn = self.db.begin_write()?;
        // Create every table so read transactions never see a missing one.
        txn.open_table(LEASES)?;
        txn.open_table(LEASE_IPS)?;
        txn.open_table(NODES)?;
        txn.open_table(EVENTS)?;
        if let Some(from) = found {
            migrate(&txn, from)?;
            tracing::info!(from, to = SCHEMA_VERSION, path = %self.path.display(), "migrated state schema");
        }
        txn.open_table(META)?
            .insert(KEY_SCHEMA_VERSION, u64::from(SCHEMA_VERSION))?;
        txn.commit()?;
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

/// Upgrades the layout from schema `from` to [`SCHEMA_VERSION`] inside `txn`. Version 1 is
/// the first layout, so there is nothing to convert yet.
fn migrate(_txn: &WriteTransaction, from: u32) -> Result<(), StoreError> {
    debug_assert!(from < SCHEMA_VERSION);
    Ok(())
}

impl Store for RedbStore {
    fn schema_version(&self) -> Result<u32, StoreError> {
        self.stored_schema_version()?
            .ok_or_else(|| StoreError::Corrupt(format!("meta[{KEY_SCHEMA_VERSION}]: missing")))
    }

    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        put_lease_in(&txn, lease)?;
        txn.commit()?;
        Ok(())
    }

    fn get_lease(&self, mac: &str) -> Result<Option<Lease>, StoreError> {
        self.read_json(LEASES, mac)
    }

    fn lease_by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        let ip_key = ip.to_string();
        let txn = self.db.begin_read()?;
        let ips = txn.open_table(LEASE_IPS)?;
        let Some(mac) = ips.get(ip_key.as_str())?.map(|g| g.value().to_string()) else {
            return Ok(None);
        };
        let leases = txn.open_table(LEASES)?;
        let lease: Option<Lease> = leases
            .get(mac.as_str())?
            .map(|g| decode(LEASES.name(), &mac, g.value()))
            .transpose()?;
        match lease {
            Some(lease) if lease.ip == ip => Ok(Some(lease)),
            other => Err(StoreError::Corrupt(format!(
                "lease_ips[{ip}] points to {mac}, whose lease is {:?}",
                other.map(|l| l.ip)
            ))),
        }
    }

    fn delete_lease(&self, mac: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let existed = delete_lease_in(&txn, mac)?;
        txn.commit()?;
        Ok(existed)
    }

    fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.read_all_json(LEASES)
    }

    fn get_node(&self, mac: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.read_json(NODES, mac)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read_all_json(NODES)
    }

    fn record_transition(
        &self,
        mac: &str,
        hostname: Option<&str>,
        state: NodeState,
        detail: Option<&str>,
        at_millis: u64,
    ) -> Result<NodeRecord, StoreError> {
        let txn = self.db.begin_write()?;
        let record = record_transition_in(&txn, mac, hostname, state, detail, at_millis)?;
        txn.commit()?;
        Ok(record)
    }

    fn delete_node(&self, mac: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
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
        let txn = self.db.begin_write()?;
        let event = append_event_in(&txn, self.max_events, kind, mac, message)?;
        txn.commit()?;
        Ok(event)
    }

    fn apply(&self, ops: &[Op]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let txn = self.db.begin_write()?;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                Op::PutLease(lease) => put_lease_in(&txn, lease),
                Op::DeleteLease(mac) => delete_lease_in(&txn, mac).map(|_| ()),
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
                    if current.is_some_and(|c| c >= *state) {
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
                    append_event_in(&txn, self.max_events, kind, mac.as_deref(), message)
                        .map(|_| ())
                }
            });
        }
        txn.commit()?;
        Ok(results)
    }

    fn events_since(&self, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let range = events.range::<u64>((Bound::Excluded(after_seq), Bound::Unbounded))?;
        Self::collect_events(range, limit)
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let mut out = Self::collect_events(events.iter()?.rev(), limit)?;
        out.reverse();
        Ok(out)
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(EVENTS)?.len()?)
    }
}

// Transaction-level writes, shared by the single-write methods and `apply`.

fn put_lease_in(txn: &WriteTransaction, lease: &Lease) -> Result<(), StoreError> {
    let ip_key = lease.ip.to_string();
    let value = encode(LEASES.name(), &lease.mac, lease)?;

    {
        let mut leases = txn.open_table(LEASES)?;
        let mut ips = txn.open_table(LEASE_IPS)?;
        let holder = ips.get(ip_key.as_str())?.map(|g| g.value().to_string());
        if let Some(held_by) = holder
            && held_by != lease.mac
        {
            return Err(StoreError::Conflict {
                ip: lease.ip,
                held_by,
            });
        }
        let old = leases.insert(lease.mac.as_str(), value.as_str())?;
        let old_ip = match old {
            Some(g) => Some(decode::<Lease>(LEASES.name(), &lease.mac, g.value())?.ip),
            None => None,
        };
        if let Some(old_ip) = old_ip
            && old_ip != lease.ip
        {
            ips.remove(old_ip.to_string().as_str())?;
        }
        ips.insert(ip_key.as_str(), lease.mac.as_str())?;
    }
    Ok(())
}

fn current_state_in(txn: &WriteTransaction, mac: &str) -> Result<Option<NodeState>, StoreError> {
    let nodes = txn.open_table(NODES)?;
    let record: Option<NodeRecord> = nodes
        .get(mac)?
        .map(|g| decode(NODES.name(), mac, g.value()))
        .transpose()?;
    Ok(record.map(|r| r.state))
}

fn delete_lease_in(txn: &WriteTransaction, mac: &str) -> Result<bool, StoreError> {
    let mut leases = txn.open_table(LEASES)?;
    let mut ips = txn.open_table(LEASE_IPS)?;
    let old = match leases.remove(mac)? {
        Some(g) => Some(decode::<Lease>(LEASES.name(), mac, g.value())?),
        None => None,
    };
    if let Some(old) = &old {
        let ip_key = old.ip.to_string();
        // Only drop the index entry if it really points at this MAC.
        let points_here = ips.get(ip_key.as_str())?.is_some_and(|g| g.value() == mac);
        if points_here {
            ips.remove(ip_key.as_str())?;
        }
    }
    Ok(old.is_some())
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
