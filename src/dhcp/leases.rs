//! The in-memory lease table: the allocator's view, loaded from the store at start and kept
//! in step with it (every binding change also becomes a store op, committed before the ACK).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::desc::Mac;
use crate::store::{Lease, LeaseState, Op};

/// How long an OFFER holds its address for the client's REQUEST.
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long a DECLINEd address stays out of the pool.
pub const QUARANTINE_SECS: u64 = 3600;
/// Store key prefix of quarantine records (they belong to an address, not a MAC).
pub const QUARANTINE_KEY: &str = "declined:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ip: Ipv4Addr,
    pub state: LeaseState,
    pub granted_at: u64,
    pub expires_at: u64,
    pub hostname: Option<String>,
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    by_mac: HashMap<Mac, Entry>,
    by_ip: HashMap<Ipv4Addr, Mac>,
    quarantine: HashMap<Ipv4Addr, u64>,
    pool: Option<(u32, u32)>,
    /// Where the next free-address search starts, so allocation is O(1) amortised.
    cursor: u32,
    /// One bit per pool address, set while the address is in `by_ip` or `quarantine` (held,
    /// or held until it expires); a clear bit is free for anyone. Bits past the end of the
    /// pool are set. Lets `allocate` skip 64 held addresses per word.
    held: Vec<u64>,
}

impl LeaseTable {
    pub fn new(pool: Option<(Ipv4Addr, Ipv4Addr)>) -> LeaseTable {
        let mut t = LeaseTable::default();
        t.set_pool(pool);
        t
    }

    /// Loads persisted leases. Records that do not parse as a MAC are quarantine records.
    pub fn load(&mut self, leases: Vec<Lease>) {
        for l in leases {
            if let Some(ip) = l.mac.strip_prefix(QUARANTINE_KEY) {
                if let Ok(ip) = ip.parse() {
                    self.quarantine.insert(ip, l.expires_at);
                }
                continue;
            }
            let Ok(mac) = l.mac.parse::<Mac>() else {
                continue;
            };
            self.by_ip.insert(l.ip, mac);
            let entry = Entry {
                ip: l.ip,
                state: l.state,
                granted_at: l.granted_at,
                expires_at: l.expires_at,
                hostname: l.hostname,
            };
            self.by_mac.insert(mac, entry);
        }
        self.rebuild_held();
    }

    pub fn set_pool(&mut self, pool: Option<(Ipv4Addr, Ipv4Addr)>) {
        self.pool = pool
            .map(|(a, b)| (u32::from(a), u32::from(b)))
            .filter(|(a, b)| a <= b);
        self.cursor = self.pool.map_or(0, |p| p.0);
        self.rebuild_held();
    }

    fn rebuild_held(&mut self) {
        self.held.clear();
        let Some((start, end)) = self.pool else {
            return;
        };
        let size = u64::from(end - start) + 1;
        self.held = vec![0; usize::try_from(size.div_ceil(64)).unwrap_or(0)];
        let tail = size % 64;
        if tail != 0
            && let Some(last) = self.held.last_mut()
        {
            *last = !0u64 << tail;
        }
        let ips: Vec<Ipv4Addr> = self
            .by_ip
            .keys()
            .chain(self.quarantine.keys())
            .copied()
            .collect();
        for ip in ips {
            self.set_held(ip, true);
        }
    }

    /// The bit of `ip` in `held`, if it is a pool address.
    fn bit(&self, ip: Ipv4Addr) -> Option<(usize, u64)> {
        let (start, end) = self.pool?;
        let n = u32::from(ip);
        if n < start || n > end {
            return None;
        }
        let off = (n - start) as usize;
        Some((off / 64, 1u64 << (off % 64)))
    }

    fn set_held(&mut self, ip: Ipv4Addr, held: bool) {
        if let Some((word, mask)) = self.bit(ip) {
            if held {
                self.held[word] |= mask;
            } else {
                self.held[word] &= !mask;
            }
        }
    }

    /// Recomputes `ip`'s bit after it left `by_ip` or `quarantine`.
    fn refresh_held(&mut self, ip: Ipv4Addr) {
        let held = self.by_ip.contains_key(&ip) || self.quarantine.contains_key(&ip);
        self.set_held(ip, held);
    }

    /// The first never-held pool address at or after `from` (pool offset), wrapping around.
    fn next_clear(&self, from: usize) -> Option<usize> {
        let words = self.held.len();
        if words == 0 {
            return None;
        }
        let first = from / 64;
        // The first word twice: its bits from `from` on, and after wrapping its bits below.
        for k in 0..=words {
            let w = (first + k) % words;
            let mut free = !self.held[w];
            if k == 0 {
                free &= !0u64 << (from % 64);
            } else if k == words {
                free &= !(!0u64 << (from % 64));
            }
            if free != 0 {
                return Some(w * 64 + free.trailing_zeros() as usize);
            }
        }
        None
    }

    pub fn get(&self, mac: &Mac) -> Option<&Entry> {
        self.by_mac.get(mac)
    }

    pub fn holder(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.by_ip.get(&ip).copied()
    }

    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pool
            .is_some_and(|(a, b)| (a..=b).contains(&u32::from(ip)))
    }

    /// The number of addresses held (offered, bound or released but not reused yet).
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// Whether `ip` could be given to `mac` now: free, expired, or already this MAC's.
    pub fn available(&self, ip: Ipv4Addr, mac: &Mac, now: u64) -> bool {
        if self.quarantine.get(&ip).is_some_and(|&until| until > now) {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(holder) if holder == mac => true,
            Some(holder) => self.by_mac.get(holder).is_none_or(|e| reclaimable(e, now)),
        }
    }

    /// A pool address for `mac`: its current one, the one it asks for, or the next free one:
    /// first the next address (from a rotating cursor) that nobody holds, and only when the
    /// whole pool is held the next one whose holder expired or released it.
    pub fn allocate(
        &mut self,
        mac: &Mac,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        if let Some(e) = self.by_mac.get(mac)
            && self.in_pool(e.ip)
            && self.available(e.ip, mac, now)
        {
            return Some(e.ip);
        }
        if let Some(ip) = requested
            && self.in_pool(ip)
            && self.available(ip, mac, now)
        {
            return Some(ip);
        }
        let (start, end) = self.pool?;
        if let Some(off) = self.next_clear((self.cursor - start) as usize) {
            let ip = start + off as u32;
            self.cursor = if ip >= end { start } else { ip + 1 };
            return Some(Ipv4Addr::from(ip));
        }
        let size = u64::from(end - start) + 1;
        for _ in 0..size {
            let ip = Ipv4Addr::from(self.cursor);
            self.cursor = if self.cursor >= end {
                start
            } else {
                self.cursor + 1
            };
            if self.available(ip, mac, now) {
                return Some(ip);
            }
        }
        None
    }

    /// Holds `ip` for `mac` until the client's REQUEST (memory only: an offer is no promise).
    /// Returns store ops for any expired lease it displaced.
    pub fn offer(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) -> Vec<Op> {
        let ops = self.take_ip(mac, ip);
        let keep_bound = self
            .by_mac
            .get(&mac)
            .is_some_and(|e| e.ip == ip && e.state == LeaseState::Bound && e.expires_at > now);
        if !keep_bound {
            let hostname = self.by_mac.get(&mac).and_then(|e| e.hostname.clone());
            let entry = Entry {
                ip,
                state: LeaseState::Offered,
                granted_at: now,
                expires_at: now + OFFER_HOLD_SECS,
                hostname,
            };
            self.insert(mac, entry);
        }
        ops
    }

    /// Binds `ip` to `mac`; returns the store ops that make it durable.
    pub fn bind(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        now: u64,
        lease_secs: u32,
        hostname: Option<String>,
    ) -> Vec<Op> {
        let mut ops = self.take_ip(mac, ip);
        let entry = Entry {
            ip,
            state: LeaseState::Bound,
            granted_at: now,
            expires_at: now + u64::from(lease_secs),
            hostname,
        };
        ops.push(Op::PutLease(to_lease(&mac, &entry)));
        self.insert(mac, entry);
        ops
    }

    /// Forgets an un-REQUESTed offer (the client chose another server).
    pub fn cancel_offer(&mut self, mac: &Mac) {
        if self
            .by_mac
            .get(mac)
            .is_some_and(|e| e.state == LeaseState::Offered)
        {
            self.remove(mac);
        }
    }

    /// The client gave its address back: the address is free again.
    pub fn release(&mut self, mac: &Mac) -> Vec<Op> {
        match self.remove(mac) {
            Some(_) => vec![Op::DeleteLease(mac.to_string())],
            None => Vec::new(),
        }
    }

    /// The client found `ip` in use by someone else: keep it out of the pool for a while.
    pub fn decline(&mut self, mac: &Mac, ip: Ipv4Addr, now: u64) -> Vec<Op> {
        let mut ops = self.release(mac);
        let until = now + QUARANTINE_SECS;
        self.quarantine.insert(ip, until);
        self.set_held(ip, true);
        ops.push(Op::PutLease(Lease {
            mac: format!("{QUARANTINE_KEY}{ip}"),
            ip,
            state: LeaseState::Declined,
            hostname: None,
            granted_at: now,
            expires_at: until,
        }));
        ops
    }

    /// Names of bound dynamic leases, for DNS.
    pub fn dynamic_hosts(&self, now: u64) -> Vec<(String, Ipv4Addr)> {
        let mut v: Vec<(String, Ipv4Addr)> = self
            .by_mac
            .values()
            .filter(|e| e.state == LeaseState::Bound && e.expires_at > now && self.in_pool(e.ip))
            .filter_map(|e| e.hostname.clone().map(|h| (h, e.ip)))
            .collect();
        v.sort();
        v
    }

    /// Makes `ip` free for `mac`, evicting an expired or stale holder (with its store op).
    fn take_ip(&mut self, mac: Mac, ip: Ipv4Addr) -> Vec<Op> {
        let mut ops = Vec::new();
        if let Some(old) = self.by_ip.get(&ip).copied()
            && old != mac
        {
            self.remove(&old);
            ops.push(Op::DeleteLease(old.to_string()));
        }
        // A MAC holds one address: moving it frees the previous one (in memory; the store's
        // put of the new address moves its index too).
        if let Some(prev) = self.by_mac.get(&mac)
            && prev.ip != ip
        {
            let prev_ip = prev.ip;
            self.by_ip.remove(&prev_ip);
            self.refresh_held(prev_ip);
        }
        if self.quarantine.contains_key(&ip) {
            self.quarantine.remove(&ip);
            self.refresh_held(ip);
            ops.push(Op::DeleteLease(format!("{QUARANTINE_KEY}{ip}")));
        }
        ops
    }

    fn insert(&mut self, mac: Mac, entry: Entry) {
        self.set_held(entry.ip, true);
        self.by_ip.insert(entry.ip, mac);
        self.by_mac.insert(mac, entry);
    }

    fn remove(&mut self, mac: &Mac) -> Option<Entry> {
        let e = self.by_mac.remove(mac)?;
        if self.by_ip.get(&e.ip) == Some(mac) {
            self.by_ip.remove(&e.ip);
            self.refresh_held(e.ip);
        }
        Some(e)
    }
}

/// An entry whose address may go to another client.
fn reclaimable(e: &Entry, now: u64) -> bool {
    e.expires_at <= now || e.state == LeaseState::Released
}

pub fn to_lease(mac: &Mac, e: &Entry) -> Lease {
    Lease {
        mac: mac.to_string(),
        ip: e.ip,
        state: e.state,
        hostname: e.hostname.clone(),
        granted_at: e.granted_at,
        expires_at: e.expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    #[test]
    fn allocates_distinct_addresses_and_keeps_a_clients_own() {
        let mut t = LeaseTable::new(Some((ip(200), ip(202))));
        let a = t.allocate(&mac(1), None, 0).unwrap();
        t.offer(mac(1), a, 0);
        let b = t.allocate(&mac(2), None, 0).unwrap();
        assert_ne!(a, b);
        t.offer(mac(2), b, 0);
        assert_eq!(
            t.allocate(&mac(1), None, 0),
            Some(a),
            "same client, same address"
        );
        let c = t.allocate(&mac(3), None, 0).unwrap();
        t.offer(mac(3), c, 0);
        assert_eq!(t.allocate(&mac(4), None, 0), None, "pool exhausted");
        // Offers expire; then the address can go to someone else.
        assert!(t.allocate(&mac(4), None, OFFER_HOLD_SECS + 1).is_some());
    }

    #[test]
    fn requested_address_is_honoured_when_free() {
        let mut t = LeaseTable::new(Some((ip(200), ip(210))));
        assert_eq!(t.allocate(&mac(1), Some(ip(205)), 0), Some(ip(205)));
        assert_eq!(
            t.allocate(&mac(1), Some(ip(9)), 0),
            Some(ip(200)),
            "outside the pool: ignored"
        );
    }

    #[test]
    fn binding_over_an_expired_lease_deletes_the_old_one_first() {
        let mut t = LeaseTable::new(Some((ip(200), ip(200))));
        let ops = t.bind(mac(1), ip(200), 0, 60, None);
        assert_eq!(ops.len(), 1);
        assert_eq!(t.allocate(&mac(2), None, 30), None, "bound and not expired");
        let got = t.allocate(&mac(2), None, 61).unwrap();
        let ops = t.bind(mac(2), got, 61, 60, None);
        assert_eq!(ops[0], Op::DeleteLease(mac(1).to_string()));
        assert!(matches!(&ops[1], Op::PutLease(l) if l.mac == mac(2).to_string()));
        assert_eq!(t.holder(ip(200)), Some(mac(2)));
        assert!(t.get(&mac(1)).is_none());
    }

    #[test]
    fn declined_addresses_are_quarantined_and_survive_reload() {
        let mut t = LeaseTable::new(Some((ip(200), ip(201))));
        t.bind(mac(1), ip(200), 0, 600, None);
        let ops = t.decline(&mac(1), ip(200), 10);
        assert_eq!(t.allocate(&mac(1), None, 20), Some(ip(201)));
        let leases: Vec<Lease> = ops
            .into_iter()
            .filter_map(|o| {
                if let Op::PutLease(l) = o {
                    Some(l)
                } else {
                    None
                }
            })
            .collect();
        let mut reloaded = LeaseTable::new(Some((ip(200), ip(201))));
        reloaded.load(leases);
        assert!(!reloaded.available(ip(200), &mac(2), 20));
        assert!(reloaded.available(ip(200), &mac(2), 10 + QUARANTINE_SECS));
    }

    /// Every pool address's bit says whether it is in `by_ip` or `quarantine`.
    fn assert_bits(t: &LeaseTable) {
        let (start, end) = t.pool.unwrap();
        for n in start..=end {
            let ip = Ipv4Addr::from(n);
            let (w, m) = t.bit(ip).unwrap();
            let want = t.by_ip.contains_key(&ip) || t.quarantine.contains_key(&ip);
            assert_eq!(t.held[w] & m != 0, want, "{ip}");
        }
    }

    #[test]
    fn free_addresses_go_first_then_expired_ones() {
        let pool = (Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 0, 0, 129));
        let mut t = LeaseTable::new(Some(pool));
        let m = |n: u32| {
            let b = n.to_be_bytes();
            Mac([2, 0, b[0], b[1], b[2], b[3]])
        };
        // Fill the pool (130 addresses: three bitmap words, the last partly past the pool).
        let mut seen = std::collections::HashSet::new();
        for n in 0..130 {
            let ip = t.allocate(&m(n), None, 0).unwrap();
            assert!(seen.insert(ip), "{ip} handed out twice");
            if n % 2 == 0 {
                t.bind(m(n), ip, 0, 10, None);
            } else {
                t.offer(m(n), ip, 0);
            }
        }
        assert_bits(&t);
        assert_eq!(t.allocate(&m(500), None, 5), None, "all held, none expired");
        // Free one address in the middle and quarantine another: the free one is next.
        let freed = t.get(&m(77)).unwrap().ip;
        t.release(&m(77));
        let declined = t.get(&m(78)).unwrap().ip;
        t.decline(&m(78), declined, 5);
        assert_bits(&t);
        assert_eq!(t.allocate(&m(500), None, 5), Some(freed));
        t.offer(m(500), freed, 5);
        // Now only expired leases remain to be reclaimed (binds expire at 10).
        let got = t.allocate(&m(501), None, 11).unwrap();
        assert_ne!(got, declined, "quarantined");
        let ops = t.bind(m(501), got, 11, 10, None);
        assert!(matches!(&ops[0], Op::DeleteLease(_)));
        assert_bits(&t);
        // Moving a client and set_pool keep the bits right.
        let old = t.get(&m(0)).unwrap().ip;
        t.release(&m(1));
        let fresh = t.allocate(&m(0), None, 11);
        assert!(fresh.is_some());
        t.set_pool(Some(pool));
        assert_bits(&t);
        assert!(t.holder(old).is_some());
        let mut small = LeaseTable::new(Some((ip(1), ip(1))));
        assert_eq!(small.allocate(&mac(1), None, 0), Some(ip(1)));
        small.offer(mac(1), ip(1), 0);
        assert_eq!(small.allocate(&mac(2), None, 0), None);
        assert_bits(&small);
    }

    #[test]
    fn release_frees_the_address() {
        let mut t = LeaseTable::new(Some((ip(200), ip(200))));
        t.bind(mac(1), ip(200), 0, 600, Some("a".into()));
        assert_eq!(t.dynamic_hosts(1), vec![("a".to_string(), ip(200))]);
        assert_eq!(
            t.release(&mac(1)),
            vec![Op::DeleteLease(mac(1).to_string())]
        );
        assert_eq!(t.allocate(&mac(2), None, 1), Some(ip(200)));
    }
}
