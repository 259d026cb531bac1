//! Machines not in the description that asked for an address. They get no answer (unless
//! enrolled or approved), but the operator should see them: a new machine in the rack is
//! usually a MAC missing from the description. Bounded memory; pure, so it is testable.

use std::collections::HashMap;

use serde::Serialize;

use crate::desc::Mac;

/// How many distinct unknown MACs are remembered (the oldest are forgotten first).
pub const MAX_TRACKED: usize = 4096;
/// A machine seen again after this long is reported again (as an event).
pub const REPORT_EVERY_SECS: u64 = 3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownMachine {
    pub mac: String,
    /// Unix seconds.
    pub first_seen: u64,
    pub last_seen: u64,
    pub requests: u64,
    /// What kind of client it looked like (PXE, HTTP boot, iPXE, plain DHCP).
    pub client_class: Option<String>,
    #[serde(skip)]
    reported: u64,
}

/// What to do after noting a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First sight (or the first in [`REPORT_EVERY_SECS`]): record an event.
    Report,
    Quiet,
}

#[derive(Debug, Default)]
pub struct Tracker {
    machines: HashMap<Mac, UnknownMachine>,
}

impl Tracker {
    pub fn note(&mut self, mac: Mac, client_class: Option<&str>, now: u64) -> Seen {
        if !self.machines.contains_key(&mac)
            && self.machines.len() >= MAX_TRACKED
            && let Some(oldest) = self
                .machines
                .iter()
                .min_by_key(|(_, m)| m.last_seen)
                .map(|(k, _)| *k)
        {
            self.machines.remove(&oldest);
        }
        let m = self.machines.entry(mac).or_insert_with(|| UnknownMachine {
            mac: mac.to_string(),
            first_seen: now,
            last_seen: now,
            requests: 0,
            client_class: None,
            reported: 0,
        });
        m.last_seen = now;
        m.requests += 1;
        if let Some(v) = client_class {
            m.client_class = Some(v.chars().take(64).collect());
        }
        if m.requests == 1 || now.saturating_sub(m.reported) >= REPORT_EVERY_SECS {
            m.reported = now;
            Seen::Report
        } else {
            Seen::Quiet
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<UnknownMachine> {
        let mut v: Vec<UnknownMachine> = self.machines.values().cloned().collect();
        v.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.mac.cmp(&b.mac)));
        v
    }

    pub fn forget(&mut self, mac: &Mac) {
        self.machines.remove(mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0x99, n])
    }

    #[test]
    fn reports_first_sight_then_hourly() {
        let mut t = Tracker::default();
        assert_eq!(t.note(mac(1), Some("PXEClient"), 100), Seen::Report);
        assert_eq!(t.note(mac(1), None, 200), Seen::Quiet);
        assert_eq!(t.note(mac(1), None, 100 + REPORT_EVERY_SECS), Seen::Report);
        let l = t.list();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].requests, l[0].first_seen), (3, 100));
        assert_eq!(l[0].client_class.as_deref(), Some("PXEClient"));
    }

    #[test]
    fn memory_is_bounded_oldest_go_first() {
        let mut t = Tracker::default();
        for i in 0..MAX_TRACKED as u64 {
            let m = Mac([0, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            t.note(m, None, 1000 + i);
        }
        t.note(mac(7), None, 10_000_000);
        let l = t.list();
        assert_eq!(l.len(), MAX_TRACKED);
        assert_eq!(l[0].mac, mac(7).to_string());
        assert!(
            !l.iter().any(|m| m.last_seen == 1000),
            "the oldest was dropped"
        );
    }
}
