use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;

fn lease(mac: &str, ip: [u8; 4]) -> Lease {
    Lease {
        mac: mac.to_string(),
        ip: Ipv4Addr::from(ip),
        state: LeaseState::Bound,
        hostname: Some("node-1".to_string()),
        granted_at: 1_700_000_000,
        expires_at: 1_700_003_600,
    }
}

fn small(dir: &Path, max_events: u64) -> RedbStore {
    open_with(dir, Options { max_events }).unwrap()
}

const MAC_A: &str = "52:54:00:00:00:0A";
const MAC_B: &str = "52:54:00:00:00:0B";

#[test]
fn lease_put_get_by_ip_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let a = lease(MAC_A, [10, 0, 0, 10]);
    {
        let store = open(dir.path()).unwrap();
        assert_eq!(store.get_lease(MAC_A).unwrap(), None);
        assert_eq!(store.lease_by_ip(a.ip).unwrap(), None);
        store.put_lease(&a).unwrap();
        assert_eq!(store.get_lease(MAC_A).unwrap(), Some(a.clone()));
        assert_eq!(store.lease_by_ip(a.ip).unwrap(), Some(a.clone()));
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(store.get_lease(MAC_A).unwrap(), Some(a.clone()));
    assert_eq!(store.lease_by_ip(a.ip).unwrap(), Some(a.clone()));
    assert_eq!(store.leases().unwrap(), vec![a]);
}

#[test]
fn lease_conflict_never_shares_an_ip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let a = lease(MAC_A, [10, 0, 0, 10]);
    store.put_lease(&a).unwrap();

    let b = lease(MAC_B, [10, 0, 0, 10]);
    match store.put_lease(&b) {
        Err(StoreError::Conflict { ip, held_by }) => {
            assert_eq!(ip, a.ip);
            assert_eq!(held_by, MAC_A);
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    // Nothing of the rejected write is visible.
    assert_eq!(store.get_lease(MAC_B).unwrap(), None);
    assert_eq!(store.lease_by_ip(a.ip).unwrap(), Some(a.clone()));

    // The holder may renew / change state on the same IP.
    let mut renewed = a.clone();
    renewed.state = LeaseState::Released;
    renewed.expires_at += 60;
    store.put_lease(&renewed).unwrap();
    assert_eq!(store.lease_by_ip(a.ip).unwrap(), Some(renewed));
}

#[test]
fn lease_move_ip_and_delete_keep_index_in_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let a = lease(MAC_A, [10, 0, 0, 10]);
    store.put_lease(&a).unwrap();

    // Moving A to a new IP frees the old one.
    let moved = lease(MAC_A, [10, 0, 0, 11]);
    store.put_lease(&moved).unwrap();
    assert_eq!(store.lease_by_ip(a.ip).unwrap(), None);
    assert_eq!(store.lease_by_ip(moved.ip).unwrap(), Some(moved.clone()));
    store.put_lease(&lease(MAC_B, [10, 0, 0, 10])).unwrap();

    assert!(store.delete_lease(MAC_A).unwrap());
    assert!(!store.delete_lease(MAC_A).unwrap());
    assert_eq!(store.get_lease(MAC_A).unwrap(), None);
    assert_eq!(store.lease_by_ip(moved.ip).unwrap(), None);
    // After deletion the IP can go to someone else.
    store.put_lease(&lease(MAC_B, [10, 0, 0, 11])).unwrap();
    assert_eq!(store.leases().unwrap().len(), 1);
    assert_eq!(
        store.lease_by_ip(Ipv4Addr::new(10, 0, 0, 10)).unwrap(),
        None
    );
}

#[test]
fn transitions_append_history_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        let r = store
            .record_transition(MAC_A, None, NodeState::Discovered, Some("dhcp"), 1000)
            .unwrap();
        assert_eq!(r.hostname, None);
        assert_eq!(r.history.len(), 1);
        let r = store
            .record_transition(MAC_A, Some("cp-1"), NodeState::Pxe, None, 2000)
            .unwrap();
        assert_eq!(r.hostname.as_deref(), Some("cp-1"));
        let r = store
            .record_transition(MAC_A, None, NodeState::Booting, Some("ipxe"), 3000)
            .unwrap();
        assert_eq!(
            r.hostname.as_deref(),
            Some("cp-1"),
            "None keeps the hostname"
        );
        assert_eq!(r.state, NodeState::Booting);
        assert_eq!(r.detail.as_deref(), Some("ipxe"));
        assert_eq!(r.updated_at, 3000);
        let states: Vec<_> = r.history.iter().map(|t| (t.state, t.at)).collect();
        assert_eq!(
            states,
            [
                (NodeState::Discovered, 1000),
                (NodeState::Pxe, 2000),
                (NodeState::Booting, 3000)
            ]
        );
    }
    let store = open(dir.path()).unwrap();
    let r = store.get_node(MAC_A).unwrap().unwrap();
    assert_eq!(r.state, NodeState::Booting);
    assert_eq!(r.history.len(), 3);
    assert_eq!(store.nodes().unwrap(), vec![r]);
    assert!(store.delete_node(MAC_A).unwrap());
    assert!(!store.delete_node(MAC_A).unwrap());
    assert_eq!(store.get_node(MAC_A).unwrap(), None);
}

#[test]
fn history_is_capped_dropping_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let total = HISTORY_CAP as u64 + 25;
    let mut last = None;
    for i in 1..=total {
        last = Some(
            store
                .record_transition(MAC_A, None, NodeState::Installing, None, i)
                .unwrap(),
        );
    }
    let r = last.unwrap();
    assert_eq!(r.history.len(), HISTORY_CAP);
    assert_eq!(
        r.history.first().unwrap().at,
        total - HISTORY_CAP as u64 + 1
    );
    assert_eq!(r.history.last().unwrap().at, total);
    assert_eq!(store.get_node(MAC_A).unwrap().unwrap(), r);
}

#[test]
fn event_seq_monotonic_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        for i in 1..=5 {
            let e = store.append_event("dhcp.ack", Some(MAC_A), "ack").unwrap();
            assert_eq!(e.seq, i);
            assert_eq!(e.mac.as_deref(), Some(MAC_A));
        }
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(store.event_count().unwrap(), 5);
    let e = store.append_event("plan.reloaded", None, "reload").unwrap();
    assert_eq!(e.seq, 6);
    assert_eq!(store.recent_events(1).unwrap(), vec![e]);
}

#[test]
fn retention_trims_oldest_and_never_reuses_seq() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = small(dir.path(), 10);
        for _ in 0..25 {
            store.append_event("dhcp.ack", None, "x").unwrap();
        }
        assert_eq!(store.event_count().unwrap(), 10);
        let seqs: Vec<u64> = store
            .events_since(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (16..=25).collect::<Vec<_>>());
    }
    // Lowering the bound trims on the next append; seq keeps counting.
    let store = small(dir.path(), 3);
    let e = store.append_event("dhcp.ack", None, "x").unwrap();
    assert_eq!(e.seq, 26);
    let seqs: Vec<u64> = store
        .recent_events(100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [24, 25, 26]);
    drop(store);

    // Even a log trimmed to nothing does not restart numbering.
    let store = small(dir.path(), 0);
    assert_eq!(store.append_event("x", None, "x").unwrap().seq, 27);
    assert_eq!(store.event_count().unwrap(), 0);
    drop(store);
    let store = small(dir.path(), 10);
    assert_eq!(store.append_event("x", None, "x").unwrap().seq, 28);
}

#[test]
fn events_since_pages_and_recent_is_newest_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    for i in 1..=7 {
        store
            .append_event("secret.issued", None, &format!("m{i}"))
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let page = store.events_since(cursor, 3).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        cursor = page.last().unwrap().seq;
        seen.extend(page.into_iter().map(|e| e.message));
    }
    assert_eq!(seen, (1..=7).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(store.events_since(u64::MAX, 10).unwrap().is_empty());
    assert!(store.events_since(0, 0).unwrap().is_empty());

    let recent: Vec<u64> = store
        .recent_events(3)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(recent, [5, 6, 7]);
    assert_eq!(store.recent_events(100).unwrap().len(), 7);
}

#[test]
fn schema_version_written_and_too_new_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    {
        let store = open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        store.put_lease(&lease(MAC_A, [10, 0, 0, 10])).unwrap();
    }
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let mut meta = txn.open_table(def).unwrap();
            meta.insert("schema_version", u64::from(SCHEMA_VERSION) + 1)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    match open(dir.path()) {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!(found, SCHEMA_VERSION + 1);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    // Refusing did not rewrite the version.
    let db = redb::Database::create(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    let meta = txn.open_table(def).unwrap();
    let v = redb::ReadableTable::get(&meta, "schema_version")
        .unwrap()
        .unwrap()
        .value();
    assert_eq!(v, u64::from(SCHEMA_VERSION) + 1);
}

#[test]
fn older_schema_is_migrated_keeping_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    let a = lease(MAC_A, [10, 0, 0, 10]);
    open(dir.path()).unwrap().put_lease(&a).unwrap();
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            txn.open_table(def)
                .unwrap()
                .insert("schema_version", 0)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.get_lease(MAC_A).unwrap(), Some(a));
}

#[test]
fn second_open_reports_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path()).unwrap();
    match open(dir.path()) {
        Err(e @ StoreError::Locked(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("another slipway process is using"), "{msg}");
            assert!(msg.contains(STATE_FILE), "{msg}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn undecodable_record_is_reported_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    drop(open(dir.path()).unwrap());
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("nodes");
            txn.open_table(def)
                .unwrap()
                .insert(MAC_A, "{not json")
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = open(dir.path()).unwrap();
    for result in [store.get_node(MAC_A).map(|_| ()), store.nodes().map(|_| ())] {
        match result {
            Err(StoreError::Corrupt(msg)) => {
                assert!(msg.contains("nodes") && msg.contains(MAC_A), "{msg}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn state_dir_created_with_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("var").join("slipway");
    let store = open(&dir).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(dir.join(STATE_FILE).is_file());
    assert_eq!(store.path(), dir.join(STATE_FILE));
}

#[test]
fn apply_commits_a_batch_and_isolates_a_conflicting_op() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let a = lease(MAC_A, [10, 0, 0, 10]);
    let b_same_ip = lease(MAC_B, [10, 0, 0, 10]);
    let ops = vec![
        Op::PutLease(a.clone()),
        Op::PutLease(b_same_ip),
        Op::Transition {
            mac: MAC_A.to_string(),
            hostname: Some("node-1".into()),
            state: NodeState::Discovered,
            detail: None,
            at_millis: 5,
            forward_only: true,
        },
        Op::Event {
            kind: "dhcp.ack".into(),
            mac: Some(MAC_A.into()),
            message: "ack".into(),
        },
    ];
    let results = store.apply(&ops).unwrap();
    assert!(results[0].is_ok());
    assert!(
        matches!(results[1], Err(StoreError::Conflict { .. })),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok() && results[3].is_ok());
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.lease_by_ip(a.ip).unwrap(), Some(a));
    assert_eq!(store.get_lease(MAC_B).unwrap(), None);
    assert_eq!(
        store.get_node(MAC_A).unwrap().unwrap().state,
        NodeState::Discovered
    );
    assert_eq!(store.recent_events(1).unwrap()[0].kind, "dhcp.ack");
    // forward_only: an earlier state than the current one is not written.
    let back = Op::Transition {
        mac: MAC_A.to_string(),
        hostname: None,
        state: NodeState::Planned,
        detail: None,
        at_millis: 6,
        forward_only: true,
    };
    assert!(store.apply(&[back]).unwrap()[0].is_ok());
    assert_eq!(store.get_node(MAC_A).unwrap().unwrap().history.len(), 1);
    let del = store.apply(&[Op::DeleteLease(MAC_A.into())]).unwrap();
    assert!(del[0].is_ok());
    assert_eq!(store.leases().unwrap(), vec![]);
}
