//! Persistent state: DHCP leases, node lifecycle records, the event log and the schema version.
//!
//! Node records, events and the schema version live in one redb file,
//! `<state_dir>/state.redb`, written in redb transactions committed with immediate durability
//! (fsync before `commit` returns). Leases are held in memory and made durable in an
//! append-only journal beside it (`<state_dir>/leases.<gen>.journal`, one `fdatasync` per
//! batch), compacted into a snapshot in the redb file in the background. Either way a process
//! killed at any point reopens with every record whose write call had returned.
//!
//! The [`Store`] trait is what the servers use; [`RedbStore`] is the only backend today, the
//! trait leaves room for an etcd backend later.
//!
//! MAC addresses are used verbatim as keys. Callers must pass the canonical upper-case,
//! colon-separated form (`52:54:00:AB:CD:EF`); the store does not normalise them.

mod journal;
mod redb_store;
#[cfg(test)]
mod tests;
mod tokens;

use std::fmt::Display;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::status::NodeState;

pub use redb_store::{Options, RedbStore};
pub use tokens::{BootToken, TokenCheck, TokenUse, check_token};

/// Version of the on-disk layout written by this build. 2: leases in the journal, the redb
/// `leases` table is its snapshot. 3: the `boot_tokens` table. 4: the `approved` table.
pub const SCHEMA_VERSION: u32 = 4;

/// Name of the database file inside the state directory.
pub const STATE_FILE: &str = "state.redb";

/// Per-node history entries kept; older transitions are dropped first.
pub const HISTORY_CAP: usize = 200;

/// Default bound on the event log (`Options::max_events`).
pub const DEFAULT_MAX_EVENTS: u64 = 100_000;

/// Where a DHCP lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    Offered,
    Bound,
    Released,
    Declined,
}

/// A DHCP lease, keyed by MAC. The IP stays reserved for this MAC in every state until the
/// lease is deleted: to give the IP to another machine, delete this lease first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Upper-case colon form, e.g. `52:54:00:AB:CD:EF`.
    pub mac: String,
    pub ip: Ipv4Addr,
    pub state: LeaseState,
    pub hostname: Option<String>,
    /// Unix seconds.
    pub granted_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

/// One entry of a node's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: NodeState,
    /// Unix milliseconds.
    pub at: u64,
    pub detail: Option<String>,
}

/// The lifecycle record of one machine, keyed by MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub mac: String,
    pub hostname: Option<String>,
    /// Current state (the state of the last transition).
    pub state: NodeState,
    /// Detail of the last transition.
    pub detail: Option<String>,
    /// Unix milliseconds of the last transition.
    pub updated_at: u64,
    /// Oldest first, at most [`HISTORY_CAP`] entries.
    pub history: Vec<Transition>,
}

/// An entry of the append-only event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Strictly increasing, never reused (also not after retention trimmed older events).
    pub seq: u64,
    /// Unix milliseconds.
    pub at: u64,
    /// Dotted kind, e.g. `dhcp.ack`, `secret.issued`, `plan.reloaded`.
    pub kind: String,
    pub mac: Option<String>,
    pub message: String,
}

/// One write of a batch applied with [`Store::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutLease(Lease),
    DeleteLease(String),
    Transition {
        mac: String,
        hostname: Option<String>,
        state: NodeState,
        detail: Option<String>,
        at_millis: u64,
        /// Skip the write when the node is already at or past `state` (e.g. a DHCP renewal
        /// of an installed node must not move it back to `discovered`). A node in `failed`
        /// is past everything: it stays failed until an explicit transition (see
        /// docs/boot-flow.md), while the skipped step's event is still recorded.
        forward_only: bool,
    },
    Event {
        kind: String,
        mac: Option<String>,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("state database error: {0}")]
    Db(String),
    #[error("state database holds an undecodable record: {0}")]
    Corrupt(String),
    #[error("IP {ip} is already leased to {held_by}")]
    Conflict { ip: Ipv4Addr, held_by: String },
    #[error(
        "state database has schema version {found}, this slipway supports up to {supported}; \
         refusing to touch it (upgrade slipway)"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("another slipway process is using {}", .0.display())]
    Locked(PathBuf),
}

// redb errors are wrapped by their message; `DatabaseAlreadyOpen` is mapped to
// `StoreError::Locked` where the file is opened.
macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_error_from!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

fn encode<T: Serialize>(table: &str, key: impl Display, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode {table}[{key}]: {e}")))
}

fn decode<T: DeserializeOwned>(table: &str, key: impl Display, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(format!("{table}[{key}]: {e}")))
}

/// The persistent state behind Slipway. All methods are synchronous and each write is
/// durable when it returns; call them from `spawn_blocking` in async code.
pub trait Store: Send + Sync {
    /// Schema version of the open database (equals [`SCHEMA_VERSION`] after open).
    fn schema_version(&self) -> Result<u32, StoreError>;

    /// Inserts or replaces the lease of `lease.mac`. Fails with [`StoreError::Conflict`] if
    /// `lease.ip` is held by another MAC; nothing is written then.
    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError>;
    fn get_lease(&self, mac: &str) -> Result<Option<Lease>, StoreError>;
    fn lease_by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError>;
    /// Deletes the lease and frees its IP. Returns whether a lease existed.
    fn delete_lease(&self, mac: &str) -> Result<bool, StoreError>;
    /// All leases, ordered by MAC.
    fn leases(&self) -> Result<Vec<Lease>, StoreError>;

    fn get_node(&self, mac: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// All node records, ordered by MAC.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Appends a transition to the node's history (creating the record if missing) and makes
    /// it the current state. `hostname: None` keeps the recorded hostname.
    fn record_transition(
        &self,
        mac: &str,
        hostname: Option<&str>,
        state: NodeState,
        detail: Option<&str>,
        at_millis: u64,
    ) -> Result<NodeRecord, StoreError>;
    /// Returns whether a record existed.
    fn delete_node(&self, mac: &str) -> Result<bool, StoreError>;

    /// Appends an event stamped with the current time and the next sequence number; trims the
    /// oldest events beyond the retention bound in the same transaction.
    fn append_event(
        &self,
        kind: &str,
        mac: Option<&str>,
        message: &str,
    ) -> Result<Event, StoreError>;
    /// Applies a batch of writes durably with one fsync per kind (the DHCP server's group
    /// commit): the lease ops in one journal frame, the node and event ops in one redb
    /// transaction, leases first. Each op gets its own result; an op that fails (a lease
    /// conflict) writes nothing, the others still commit. `Err` means nothing was committed.
    /// The two parts are each atomic but not atomic together: if the process dies between
    /// them, the leases can be durable without the node and event writes of the batch (the
    /// call had not returned, so no reply depending on them was sent).
    fn apply(&self, ops: &[Op]) -> Result<Vec<Result<(), StoreError>>, StoreError>;
    /// Up to `limit` events with `seq > after_seq`, oldest first.
    fn events_since(&self, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// The last `limit` events, newest last.
    fn recent_events(&self, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// Number of events currently retained.
    fn event_count(&self) -> Result<u64, StoreError>;

    /// Makes `token` the node's only valid boot token (an earlier one stops working) and
    /// records a `secret.issued` event, in one transaction.
    fn issue_boot_token(&self, token: &BootToken) -> Result<Event, StoreError>;
    fn boot_token(&self, mac: &str) -> Result<Option<BootToken>, StoreError>;
    /// Checks a presented token (by hash) with [`check_token`] and, in the same transaction,
    /// spends it when it unlocks the config, or records a `token.refused` event when it is
    /// refused: two concurrent fetches with one token cannot both succeed.
    fn use_boot_token(
        &self,
        mac: &str,
        hash: &str,
        usage: TokenUse,
        now_millis: u64,
    ) -> Result<TokenCheck, StoreError>;
    /// Removes the node's token; returns whether one existed.
    fn revoke_boot_token(&self, mac: &str) -> Result<bool, StoreError>;

    /// Records the operator's approval of a machine not in the description (it is then
    /// served like an `enroll-worker` machine), with a `node.approved` event.
    fn approve_machine(&self, mac: &str) -> Result<(), StoreError>;
    /// Approved MACs, ordered.
    fn approved_machines(&self) -> Result<Vec<String>, StoreError>;
}

/// Opens (creating if needed) the store in `state_dir` with default options. The directory is
/// created with mode 0700 if missing.
pub fn open(state_dir: &Path) -> Result<RedbStore, StoreError> {
    open_with(state_dir, Options::default())
}

/// Like [`open`] with explicit options.
pub fn open_with(state_dir: &Path, options: Options) -> Result<RedbStore, StoreError> {
    ensure_state_dir(state_dir)?;
    RedbStore::open_with(&state_dir.join(STATE_FILE), options)
}

fn ensure_state_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format_args!("{mode:o}"),
                    "state directory is accessible by other users; expected 0700"
                );
            }
            Ok(())
        }
        Ok(_) => Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("state path {} exists and is not a directory", dir.display()),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                StoreError::Io(std::io::Error::new(
                    e.kind(),
                    format!("creating state directory {}: {e}", dir.display()),
                ))
            }),
        Err(e) => Err(StoreError::Io(std::io::Error::new(
            e.kind(),
            format!("reading state directory {}: {e}", dir.display()),
        ))),
    }
}

/// Current time in unix milliseconds (0 if the clock is before 1970).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Current time in unix seconds (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    now_millis() / 1000
}
