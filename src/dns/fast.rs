//! Precomputed answers: every in-zone (name, type) a client is likely to ask is answered by
//! `Zone::answer` once, when the snapshot is built, and encoded twice (without and with
//! EDNS). A plain query for one of them is then answered by copying the template and
//! patching ID, RD, CD, DO and the question's letter case. Anything unusual (several
//! questions, compression in the question, unknown EDNS version, trailing bytes, a name
//! not in the table) goes down the full path, which produces the same answer.

use std::collections::HashMap;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};

use super::{EDNS_PAYLOAD, Snapshot, finish};

/// Longest wire-format name plus the two bytes of the query type.
const KEY_MAX: usize = 255 + 2;
/// Largest template kept: anything bigger may need truncation and takes the full path.
const TEMPLATE_MAX: usize = 512;

#[derive(Debug, Default)]
pub(super) struct Table {
    /// Key: lower-case wire-format name followed by the query type (big-endian).
    map: HashMap<Box<[u8]>, Entry>,
}

#[derive(Debug)]
struct Entry {
    plain: Box<[u8]>,
    edns: Box<[u8]>,
}

fn wire_name(name: &Name, out: &mut Vec<u8>) {
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
}

impl Table {
    pub(super) fn build(snap: &Snapshot) -> Table {
        let mut keys = snap.zone.populated();
        let with_a: Vec<Name> = keys
            .iter()
            .filter(|(_, t)| *t == RecordType::A)
            .map(|(n, _)| n.clone())
            .collect();
        // Stub resolvers ask AAAA beside A: keep the (empty) answer hot too.
        keys.extend(with_a.into_iter().map(|n| (n, RecordType::AAAA)));

        let mut map = HashMap::with_capacity(keys.len());
        for (name, qtype) in keys {
            let name = name.to_lowercase();
            let mut request = Message::query();
            request.metadata.id = 0;
            request.add_query(Query::query(name.clone(), qtype));
            let Some(resp) = snap.zone.answer(&request) else {
                continue;
            };
            let mut plain = resp.clone();
            finish(snap, &mut plain, Some(&request));
            let mut edns_request = request.clone();
            let mut e = Edns::new();
            e.set_max_payload(EDNS_PAYLOAD);
            edns_request.set_edns(e);
            let mut with_edns = resp;
            finish(snap, &mut with_edns, Some(&edns_request));
            let (Ok(plain), Ok(edns)) = (plain.to_vec(), with_edns.to_vec()) else {
                continue;
            };
            if plain.len() > TEMPLATE_MAX || edns.len() > TEMPLATE_MAX {
                continue;
            }
            let mut key = Vec::with_capacity(KEY_MAX);
            wire_name(&name, &mut key);
            key.extend_from_slice(&u16::from(qtype).to_be_bytes());
            map.insert(
                key.into_boxed_slice(),
                Entry {
                    plain: plain.into_boxed_slice(),
                    edns: edns.into_boxed_slice(),
                },
            );
        }
        Table { map }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Answers `packet` from the table into `out` if it is a plain query for a precomputed
/// (name, type); `false` leaves `out` untouched for the full path.
pub(super) fn answer(table: &Table, packet: &[u8], out: &mut Vec<u8>) -> bool {
    let p = packet;
    // Header: a query (QR=0, opcode 0, no AA/TC), no RA/Z/RCODE; one question, no answers
    // or authorities, at most one additional (the OPT record).
    if p.len() < 17 || p[2] & 0xfe != 0 || p[3] & 0xcf != 0 {
        return false;
    }
    if p[4..10] != [0, 1, 0, 0, 0, 0] || p[10] != 0 || p[11] > 1 {
        return false;
    }
    let mut key = [0u8; KEY_MAX];
    let mut k = 0;
    let mut i = 12;
    loop {
        let Some(&len) = p.get(i) else {
            return false;
        };
        let len = usize::from(len);
        if len == 0 {
            key[k] = 0;
            k += 1;
            i += 1;
            break;
        }
        // No compression pointers (0xc0) or extended labels in a question here.
        if len > 63 || i + 1 + len > p.len() || k + 1 + len + 1 > 255 {
            return false;
        }
        key[k] = len as u8;
        for (d, s) in key[k + 1..k + 1 + len]
            .iter_mut()
            .zip(&p[i + 1..i + 1 + len])
        {
            *d = s.to_ascii_lowercase();
        }
        k += 1 + len;
        i += 1 + len;
    }
    if i + 4 > p.len() || p[i + 2..i + 4] != [0, 1] {
        return false;
    }
    key[k] = p[i];
    key[k + 1] = p[i + 1];
    k += 2;
    i += 4;
    let question_end = i;

    let mut dnssec_ok = None;
    if p[11] == 1 {
        // OPT: root name, type 41, class = payload size, TTL = ext-rcode, version, flags.
        if p.len() < i + 11 || p[i] != 0 || p[i + 1..i + 3] != [0, 41] {
            return false;
        }
        if p[i + 5] != 0 || p[i + 6] != 0 {
            return false;
        }
        let rdlen = usize::from(u16::from_be_bytes([p[i + 9], p[i + 10]]));
        if i + 11 + rdlen != p.len() || !options_well_formed(&p[i + 11..]) {
            return false;
        }
        dnssec_ok = Some(p[i + 7] & 0x80);
    } else if i != p.len() {
        return false;
    }

    let Some(entry) = table.map.get(&key[..k]) else {
        return false;
    };
    let template = if dnssec_ok.is_some() {
        &entry.edns
    } else {
        &entry.plain
    };
    out.extend_from_slice(template);
    out[0] = p[0];
    out[1] = p[1];
    out[2] |= p[2] & 0x01; // RD
    out[3] |= p[3] & 0x10; // CD
    out[12..question_end].copy_from_slice(&p[12..question_end]);
    if let Some(d) = dnssec_ok {
        // The response's OPT record is last: its flags' high byte is 4 bytes from the end.
        let n = out.len();
        out[n - 4] |= d;
    }
    true
}

/// EDNS options are (code, length, data) triples that fill the OPT data exactly.
fn options_well_formed(mut data: &[u8]) -> bool {
    while !data.is_empty() {
        if data.len() < 4 {
            return false;
        }
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        if data.len() < 4 + len {
            return false;
        }
        data = &data[4 + len..];
    }
    true
}
