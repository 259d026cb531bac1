//! Crash safety of the state store: a writer process is SIGKILLed in the middle of writes,
//! several times on the same directory, and every record it reported as committed must be
//! there after each reopen.
//!
//! The writers are this test binary itself, re-executed to run only `writer_child` (with
//! `SLIPWAY_CRASH_CHILD_DIR` set: events, node records and leases one by one) or
//! `lease_writer_child` (with `SLIPWAY_CRASH_LEASE_DIR` set: batches of lease changes with
//! the journal compacted every few batches, so kills land in journal appends and in
//! compactions).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use slipway::status::NodeState;
use slipway::store::{self, Lease, LeaseState, Op, Store};

const CHILD_ENV: &str = "SLIPWAY_CRASH_CHILD_DIR";
const LEASE_CHILD_ENV: &str = "SLIPWAY_CRASH_LEASE_DIR";
const LINES_BEFORE_KILL: usize = 200;
const CYCLES: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(60);

fn mac_for(n: u64) -> String {
    let b = n.to_be_bytes();
    format!("02:00:{:02X}:{:02X}:{:02X}:{:02X}", b[4], b[5], b[6], b[7])
}

/// 10.0.0.0/8, distinct for every n below 2^24.
fn ip_for(n: u64) -> Ipv4Addr {
    Ipv4Addr::from(0x0A00_0000 | u32::try_from(n).expect("n fits u32"))
}

fn state_for(n: u64) -> NodeState {
    NodeState::ALL[usize::try_from(n).unwrap() % NodeState::ALL.len()]
}

fn lease_for(n: u64) -> Lease {
    Lease {
        mac: mac_for(n),
        ip: ip_for(n),
        state: LeaseState::Bound,
        hostname: Some(format!("node-{n}")),
        granted_at: n,
        expires_at: n + 3600,
    }
}

/// The writer. A no-op in a normal test run; loops until killed when re-executed.
#[test]
fn writer_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = store::open(Path::new(&dir)).expect("child opens the store");
    let mut n = store.event_count().expect("event_count") + 1;
    let stdout = std::io::stdout();
    loop {
        let event = store
            .append_event("test.write", Some(&mac_for(n)), &format!("write {n}"))
            .expect("append_event");
        assert_eq!(event.seq, n, "event seq follows the iteration counter");
        store
            .record_transition(
                &mac_for(n),
                Some(&format!("node-{n}")),
                state_for(n),
                Some(&format!("write {n}")),
                n,
            )
            .expect("record_transition");
        store.put_lease(&lease_for(n)).expect("put_lease");
        let mut out = stdout.lock();
        writeln!(out, "committed {n}").expect("stdout");
        out.flush().expect("flush");
        n += 1;
    }
}

/// A lease that is put and deleted again in the same batch as `lease_for(n)`.
fn scratch_for(n: u64) -> Lease {
    let b = n.to_be_bytes();
    Lease {
        mac: format!("04:00:{:02X}:{:02X}:{:02X}:{:02X}", b[4], b[5], b[6], b[7]),
        ip: Ipv4Addr::from(0x0B00_0000 | u32::try_from(n).expect("n fits u32")),
        state: LeaseState::Offered,
        hostname: None,
        granted_at: n,
        expires_at: n + 60,
    }
}

/// The lease writer: one batch per iteration (new lease n, a renewal of n - 1, a scratch
/// lease put and deleted), with compaction after every 8 journaled changes. Loops until
/// killed.
#[test]
fn lease_writer_child() {
    let Some(dir) = std::env::var_os(LEASE_CHILD_ENV) else {
        return;
    };
    let options = store::Options {
        compact_min_ops: 8,
        compact_factor: 0,
        ..store::Options::default()
    };
    let store = store::open_with(Path::new(&dir), options).expect("child opens the store");
    let mut n = 1 + store
        .leases()
        .expect("leases")
        .iter()
        .filter(|l| l.mac.starts_with("02:00:"))
        .map(|l| l.granted_at)
        .max()
        .unwrap_or(0);
    let stdout = std::io::stdout();
    loop {
        let mut ops = vec![Op::PutLease(lease_for(n))];
        if n > 1 {
            ops.push(Op::PutLease(lease_for(n - 1)));
        }
        ops.push(Op::PutLease(scratch_for(n)));
        ops.push(Op::DeleteLease(scratch_for(n).mac));
        let results = store.apply(&ops).expect("apply");
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let mut out = stdout.lock();
        writeln!(out, "committed {n}").expect("stdout");
        out.flush().expect("flush");
        n += 1;
    }
}

/// Kills the child if the parent test bails out early.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one writer until it reported `LINES_BEFORE_KILL` commits, SIGKILLs it and returns
/// every n it reported as committed.
/// `kill_delay` shifts the kill to a different point of the writer's write sequence.
fn run_and_kill(dir: &Path, kill_delay: Duration) -> Vec<u64> {
    run_child_and_kill("writer_child", CHILD_ENV, dir, kill_delay)
}

fn run_child_and_kill(name: &str, env: &str, dir: &Path, kill_delay: Duration) -> Vec<u64> {
    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn writer child");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("child stdout");

    let (tx, rx) = mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // Only complete lines count. The harness prints other lines too, and its
            // `test writer_child ... ` prefix has no newline, so the first report shares
            // that line.
            let Some(n) = line
                .strip_suffix('\n')
                .and_then(|l| l.rfind("committed ").map(|i| &l[i + "committed ".len()..]))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if tx.send(n).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + TIMEOUT;
    let mut committed = Vec::new();
    while committed.len() < LINES_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(n) => committed.push(n),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "timed out after {TIMEOUT:?} with {} committed lines",
                committed.len()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "writer exited early ({:?}) after {} committed lines",
                child.0.wait(),
                committed.len()
            ),
        }
    }
    std::thread::sleep(kill_delay);
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "writer must still be running when killed"
    );
    child.0.kill().expect("SIGKILL writer");
    // Whatever it printed before dying was committed too.
    reader.join().expect("reader thread");
    committed.extend(rx.try_iter());
    let status = child.0.wait().expect("wait writer");
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "writer died of SIGKILL"
        );
    }
    committed
}

fn assert_all_present(store: &impl Store, committed: &BTreeSet<u64>) {
    for &n in committed {
        let mac = mac_for(n);
        let events = store.events_since(n - 1, 1).expect("events_since");
        let event = events.first().unwrap_or_else(|| panic!("event {n} lost"));
        assert_eq!(event.seq, n, "event {n} lost");
        assert_eq!(event.message, format!("write {n}"));
        assert_eq!(event.mac.as_deref(), Some(mac.as_str()));

        let node = store
            .get_node(&mac)
            .expect("get_node")
            .unwrap_or_else(|| panic!("node record {n} lost"));
        assert_eq!(node.state, state_for(n));
        assert_eq!(node.hostname, Some(format!("node-{n}")));
        assert_eq!(node.history.len(), 1);
        assert_eq!(node.updated_at, n);

        let want = lease_for(n);
        assert_eq!(
            store.get_lease(&mac).expect("get_lease"),
            Some(want.clone()),
            "lease {n}"
        );
        assert_eq!(
            store.lease_by_ip(want.ip).expect("lease_by_ip"),
            Some(want),
            "lease {n} by IP"
        );
    }
}

#[test]
fn sigkill_mid_write_keeps_committed_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let mut committed = BTreeSet::new();

    for cycle in 0..CYCLES {
        let kill_delay = Duration::from_micros(700 * u64::try_from(cycle).unwrap());
        let batch = run_and_kill(&dir, kill_delay);
        let first = batch[0];
        if let Some(&prev) = committed.last() {
            assert!(
                first > prev,
                "cycle {cycle} continues numbering after {prev}"
            );
        } else {
            assert_eq!(first, 1, "the first report is seen");
        }
        for w in batch.windows(2) {
            assert_eq!(w[1], w[0] + 1, "writer reports consecutive commits");
        }
        committed.extend(batch);

        let store = store::open(&dir).expect("reopen after SIGKILL");
        assert_eq!(
            store.schema_version().expect("schema"),
            store::SCHEMA_VERSION
        );
        // Records of every cycle so far, not just the last one.
        assert_all_present(&store, &committed);
        let last = *committed.last().unwrap();
        let count = store.event_count().unwrap();
        assert!(count >= last);
        eprintln!(
            "cycle {cycle}: writer reported {first}..={last}, {} events on disk",
            count
        );

        // The store still takes writes (in ranges the writer never uses).
        let event = store
            .append_event("test.parent", None, &format!("after cycle {cycle}"))
            .expect("append after crash");
        assert!(event.seq > last);
        let mac = format!("06:00:00:00:00:{cycle:02X}");
        let parent_lease = Lease {
            mac: mac.clone(),
            ip: Ipv4Addr::new(192, 168, 0, u8::try_from(cycle).unwrap() + 1),
            state: LeaseState::Offered,
            hostname: None,
            granted_at: 1,
            expires_at: 2,
        };
        store
            .put_lease(&parent_lease)
            .expect("put_lease after crash");
        store
            .record_transition(&mac, None, NodeState::Discovered, None, 1)
            .expect("record_transition after crash");
        assert_eq!(store.get_lease(&mac).unwrap(), Some(parent_lease));
        // Drop releases the file lock before the next writer starts.
    }
    assert!(committed.len() >= CYCLES * LINES_BEFORE_KILL);
}

#[test]
fn sigkill_during_journal_appends_and_compactions_keeps_committed_leases() {
    const LEASE_CYCLES: u64 = 6;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let mut committed = BTreeSet::new();
    for cycle in 0..LEASE_CYCLES {
        let kill_delay = Duration::from_micros(350 * cycle);
        let batch = run_child_and_kill("lease_writer_child", LEASE_CHILD_ENV, &dir, kill_delay);
        if let Some(&prev) = committed.last() {
            assert!(batch[0] > prev, "cycle {cycle} continues after {prev}");
        }
        for w in batch.windows(2) {
            assert_eq!(w[1], w[0] + 1, "writer reports consecutive commits");
        }
        committed.extend(batch);

        let store = store::open(&dir).expect("reopen after SIGKILL");
        let leases = store.leases().expect("leases");
        for &n in &committed {
            let want = lease_for(n);
            assert_eq!(
                store.lease_by_ip(want.ip).expect("lease_by_ip"),
                Some(want),
                "cycle {cycle}: lease {n} lost"
            );
        }
        // No scratch lease survives (each was put and deleted in one atomic batch), at
        // most one lease beyond the reported ones (the batch being written when killed),
        // and no address is held twice.
        let last = *committed.last().unwrap();
        assert!(
            leases.iter().all(|l| l.mac.starts_with("02:00:")),
            "cycle {cycle}: scratch lease left over"
        );
        assert!(leases.len() as u64 <= last + 1, "{} leases", leases.len());
        let ips: BTreeSet<Ipv4Addr> = leases.iter().map(|l| l.ip).collect();
        assert_eq!(ips.len(), leases.len(), "an address is held twice");
        let journals: Vec<String> = std::fs::read_dir(&dir)
            .expect("read_dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".journal"))
            .collect();
        assert_eq!(
            journals.len(),
            1,
            "reopen folds every journal into the snapshot: {journals:?}"
        );
        eprintln!(
            "cycle {cycle}: writer reported up to {last}, {} leases on disk, now {}",
            leases.len(),
            journals[0]
        );
    }
}
