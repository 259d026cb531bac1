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
    open_with(
        dir,
        Options {
            max_events,
            ..Options::default()
        },
    )
    .unwrap()
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
    // A failed node stays failed through its next DHCP/TFTP steps (it is held until the
    // operator's reinstall, an explicit transition).
    store
        .record_transition(MAC_A, None, NodeState::Failed, Some("disk"), 7)
        .unwrap();
    let retry = |state, at_millis, forward_only| Op::Transition {
        mac: MAC_A.to_string(),
        hostname: None,
        state,
        detail: None,
        at_millis,
        forward_only,
    };
    assert!(
        store
            .apply(&[retry(NodeState::Discovered, 8, true)])
            .unwrap()[0]
            .is_ok()
    );
    let node = store.get_node(MAC_A).unwrap().unwrap();
    assert_eq!((node.state, node.history.len()), (NodeState::Failed, 2));
    assert!(store.apply(&[retry(NodeState::Planned, 9, false)]).unwrap()[0].is_ok());
    let node = store.get_node(MAC_A).unwrap().unwrap();
    assert_eq!((node.state, node.history.len()), (NodeState::Planned, 3));
    let del = store.apply(&[Op::DeleteLease(MAC_A.into())]).unwrap();
    assert!(del[0].is_ok());
    assert_eq!(store.leases().unwrap(), vec![]);
}

fn journals(dir: &Path) -> Vec<(u64, std::path::PathBuf)> {
    journal::list(dir).unwrap()
}

/// Where a journal's data ends (its preallocated zeros start).
fn data_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

fn compacting(dir: &Path, compact_min_ops: u64) -> RedbStore {
    open_with(
        dir,
        Options {
            compact_min_ops,
            ..Options::default()
        },
    )
    .unwrap()
}

fn lease_n(n: u32) -> Lease {
    let b = n.to_be_bytes();
    Lease {
        mac: format!("02:00:{:02X}:{:02X}:{:02X}:{:02X}", b[0], b[1], b[2], b[3]),
        ip: Ipv4Addr::from(0x0A00_0000 + n),
        state: LeaseState::Bound,
        hostname: n.is_multiple_of(2).then(|| format!("h{n}")),
        granted_at: u64::from(n),
        expires_at: u64::from(n) + 60,
    }
}

#[test]
fn journal_replay_ignores_a_torn_tail_and_never_appends_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (lease_n(1), lease_n(2), lease_n(3));
    {
        let store = open(dir.path()).unwrap();
        store.put_lease(&a).unwrap();
        store.put_lease(&b).unwrap();
    }
    // Cut B's frame short: its write never finished, so its caller never heard "committed".
    let (_, path) = journals(dir.path()).pop().unwrap();
    let len = data_end(&path);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 10).unwrap();
    drop(f);
    {
        let store = open(dir.path()).unwrap();
        assert_eq!(store.leases().unwrap(), vec![a.clone()]);
        // B's address is free again and new writes survive the next open.
        store.put_lease(&lease(MAC_B, [10, 0, 0, 2])).unwrap();
        store.put_lease(&c).unwrap();
    }
    // Garbage after good frames (a frame header promising more than was written).
    let (_, path) = journals(dir.path()).pop().unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 0]).unwrap();
    }
    let store = open(dir.path()).unwrap();
    let macs: Vec<String> = store.leases().unwrap().into_iter().map(|l| l.mac).collect();
    assert_eq!(macs, vec![a.mac.clone(), c.mac.clone(), MAC_B.to_string()]);
    assert_eq!(store.lease_by_ip(c.ip).unwrap(), Some(c));
    assert_eq!(
        journals(dir.path()).len(),
        1,
        "replayed journals are folded"
    );
}

#[test]
fn a_bad_frame_checksum_ends_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        store.put_lease(&lease_n(1)).unwrap();
        store.put_lease(&lease_n(2)).unwrap();
    }
    let (_, path) = journals(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = data_end(&path) as usize - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.leases().unwrap(), vec![lease_n(1)]);
}

#[test]
fn the_journal_grows_past_its_preallocation() {
    let dir = tempfile::tempdir().unwrap();
    let n = u32::try_from(journal::PREALLOC / 40).unwrap();
    {
        let store = compacting(dir.path(), u64::MAX);
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let ops: Vec<Op> = chunk.iter().map(|&i| Op::PutLease(lease_n(i))).collect();
            assert!(store.apply(&ops).unwrap().iter().all(Result::is_ok));
        }
        let (_, path) = journals(dir.path()).pop().unwrap();
        assert!(data_end(&path) > journal::PREALLOC);
        assert_eq!(std::fs::metadata(&path).unwrap().len() % (64 << 10), 0);
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(store.leases().unwrap().len(), n as usize);
}

#[test]
fn compaction_folds_the_journal_into_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    let mut want = std::collections::BTreeMap::new();
    {
        let store = compacting(dir.path(), u64::MAX);
        for n in 0..200 {
            store.put_lease(&lease_n(n)).unwrap();
        }
        // Churn: renewals, moves to new addresses, deletes, and a conflict that writes nothing.
        for n in 0..100 {
            let mut l = lease_n(n);
            l.expires_at += 1000;
            l.ip = Ipv4Addr::from(0x0B00_0000 + n);
            store.put_lease(&l).unwrap();
        }
        for n in 150..200 {
            assert!(store.delete_lease(&lease_n(n).mac).unwrap());
        }
        let mut thief = lease_n(1000);
        thief.ip = lease_n(120).ip;
        assert!(matches!(
            store.put_lease(&thief),
            Err(StoreError::Conflict { .. })
        ));
        let before = journals(dir.path());
        store.compact().unwrap();
        let after = journals(dir.path());
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].0, before.last().unwrap().0 + 1);
        assert_eq!(
            data_end(&after[0].1),
            journal::HEADER_LEN,
            "the fresh journal is empty"
        );
        // Writes after the compaction go to the new journal.
        store.put_lease(&lease_n(500)).unwrap();
        for l in store.leases().unwrap() {
            want.insert(l.mac.clone(), l);
        }
        assert_eq!(want.len(), 151);
    }
    // The snapshot alone (read straight from redb) has everything but the last write.
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let def: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("leases");
        let table = txn.open_table(def).unwrap();
        let snap: Vec<Lease> = redb::ReadableTable::iter(&table)
            .unwrap()
            .map(|e| serde_json::from_str(e.unwrap().1.value()).unwrap())
            .collect();
        let mut expect: Vec<Lease> = want.values().cloned().collect();
        expect.retain(|l| *l != lease_n(500));
        assert_eq!(snap, expect);
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(
        store.leases().unwrap(),
        want.into_values().collect::<Vec<_>>()
    );
    assert_eq!(
        store.lease_by_ip(lease_n(120).ip).unwrap(),
        Some(lease_n(120))
    );
    assert_eq!(
        store.lease_by_ip(lease_n(5).ip).unwrap(),
        None,
        "moved away"
    );
}

#[test]
fn background_compaction_keeps_every_lease() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = compacting(dir.path(), 16);
        for round in 0..20u64 {
            let ops: Vec<Op> = (0..50)
                .map(|n| {
                    let mut l = lease_n(n);
                    l.expires_at = round;
                    Op::PutLease(l)
                })
                .collect();
            assert!(store.apply(&ops).unwrap().iter().all(Result::is_ok));
        }
        // 1000 changes of 50 leases: the threshold (4 x 50) was crossed several times.
        store.compact().unwrap();
        assert_eq!(journals(dir.path()).len(), 1);
    }
    let store = open(dir.path()).unwrap();
    let leases = store.leases().unwrap();
    assert_eq!(leases.len(), 50);
    assert!(leases.iter().all(|l| l.expires_at == 19));
}

#[test]
fn journals_older_than_the_snapshot_are_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let a = lease(MAC_A, [10, 0, 0, 10]);
    let stale_gen;
    {
        let store = open(dir.path()).unwrap();
        store.put_lease(&a).unwrap();
        stale_gen = journals(dir.path())[0].0;
        store.compact().unwrap();
    }
    // A crash after the snapshot committed but before the old journal was deleted leaves it
    // behind; here it even says something different (B on A's address).
    let mut j = journal::Journal::create(dir.path(), stale_gen).unwrap();
    let mut frame = Vec::new();
    journal::begin_frame(&mut frame);
    journal::encode_put(&lease(MAC_B, [10, 0, 0, 10]), &mut frame).unwrap();
    if j.append(&mut frame).is_err() {
        panic!("append failed");
    }
    drop(j);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.leases().unwrap(), vec![a]);
    assert!(journals(dir.path()).iter().all(|(g, _)| *g > stale_gen));
}

#[test]
fn a_missing_journal_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        store.put_lease(&lease(MAC_A, [10, 0, 0, 10])).unwrap();
        store.compact().unwrap();
        store.put_lease(&lease(MAC_B, [10, 0, 0, 11])).unwrap();
    }
    for (_, p) in journals(dir.path()) {
        std::fs::remove_file(p).unwrap();
    }
    match open(dir.path()) {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("missing"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn schema_1_database_is_migrated_to_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    let a = lease(MAC_A, [10, 0, 0, 10]);
    {
        // The layout schema 1 wrote: leases as JSON plus an IP index table.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let leases: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("leases");
            let ips: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("lease_ips");
            txn.open_table(meta)
                .unwrap()
                .insert("schema_version", 1)
                .unwrap();
            let json = serde_json::to_string(&a).unwrap();
            txn.open_table(leases)
                .unwrap()
                .insert(MAC_A, json.as_str())
                .unwrap();
            txn.open_table(ips)
                .unwrap()
                .insert("10.0.0.10", MAC_A)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    {
        let store = open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.lease_by_ip(a.ip).unwrap(), Some(a.clone()));
        assert!(matches!(
            store.put_lease(&lease(MAC_B, [10, 0, 0, 10])),
            Err(StoreError::Conflict { .. })
        ));
    }
    let db = redb::Database::create(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let names: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    assert!(!names.contains(&"lease_ips".to_string()), "{names:?}");
}

#[test]
fn boot_token_is_spent_once_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hash = "11".repeat(32);
    let token = BootToken {
        mac: MAC_A.into(),
        hash: hash.clone(),
        issued_at: 1,
        expires_at: u64::MAX,
        config_fetched_at: None,
    };
    {
        let store = open(dir.path()).unwrap();
        let ev = store.issue_boot_token(&token).unwrap();
        assert_eq!(
            (ev.kind.as_str(), ev.mac.as_deref()),
            ("secret.issued", Some(MAC_A))
        );
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(store.boot_token(MAC_A).unwrap(), Some(token.clone()));
    let first = store
        .use_boot_token(MAC_A, &hash, TokenUse::Config, 5)
        .unwrap();
    assert!(matches!(first, TokenCheck::Valid(_)));
    let again = store
        .use_boot_token(MAC_A, &hash, TokenUse::Config, 6)
        .unwrap();
    assert_eq!(again, TokenCheck::AlreadyUsed);
    let last = store.recent_events(1).unwrap().pop().unwrap();
    assert_eq!(last.kind, "token.refused");
    assert!(last.message.contains("already used"), "{}", last.message);
    assert!(matches!(
        store
            .use_boot_token(MAC_A, &hash, TokenUse::Report, 7)
            .unwrap(),
        TokenCheck::Valid(_)
    ));
    assert_eq!(
        store
            .use_boot_token(MAC_B, &hash, TokenUse::Report, 7)
            .unwrap(),
        TokenCheck::NoToken
    );
    assert!(store.revoke_boot_token(MAC_A).unwrap());
    assert_eq!(
        store
            .use_boot_token(MAC_A, &hash, TokenUse::Report, 8)
            .unwrap(),
        TokenCheck::NoToken
    );
}
