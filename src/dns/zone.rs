//! The cluster's authoritative DNS data: a pure, immutable `Zone` built from a `Plan` and the
//! dynamically leased hosts, and the answer to one query. No sockets, no clocks: the server
//! decides transport, EDNS and forwarding around `Zone::answer`.
//!
//! Authority: the cluster domain (nodes, the bootstrapper, `registry`, the control-plane
//! endpoint, leased hosts), the reverse zone(s) covering `network.subnet`, and the endpoint
//! name on its own if it lies outside the cluster domain. Names are case-insensitive; answers
//! carry AA, negative answers carry the zone's SOA in the authority section.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, NS, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::Ipv4Net;

use crate::plan::Plan;

/// TTL of every record we serve: short, because a reload or a new lease changes answers.
pub const TTL: u32 = 60;
/// SOA MINIMUM: how long resolvers may cache a negative answer.
pub const NEGATIVE_TTL: u32 = 30;

/// One zone cut we are authoritative for.
#[derive(Debug)]
struct Apex {
    name: Name,
    soa: Record,
    ns: Record,
    kind: ApexKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApexKind {
    /// The cluster domain: every name under it is ours.
    Domain,
    /// A reverse zone; full address names are ours only when the address is in `subnet`
    /// (a /25 subnet sits inside a /24 reverse zone it does not own entirely).
    Reverse { subnet: Ipv4Net },
    /// A single name outside the cluster domain (a fully qualified endpoint name).
    Exact,
}

#[derive(Debug, Default)]
struct Owner {
    a: Vec<Ipv4Addr>,
    ptr: Vec<Name>,
}

/// The authoritative data; immutable once built. Swap a new one in to change answers.
#[derive(Debug)]
pub struct Zone {
    apexes: Vec<Apex>,
    owners: HashMap<Name, Owner>,
    /// Names with nothing of their own but with names below them (NODATA, not NXDOMAIN).
    empty_non_terminals: HashSet<Name>,
    serial: u32,
    /// The bootstrapper's own name and address, for glue with NS answers.
    ns_glue: Option<Record>,
}

/// Parses `host.example.` style text into a fully qualified, lower-case `Name`.
fn fqdn(text: &str) -> Option<Name> {
    let t = text.trim_end_matches('.');
    let mut n = Name::from_ascii(format!("{t}.")).ok()?;
    n.set_fqdn(true);
    Some(n.to_lowercase())
}

/// An RFC 1123 host label (what DHCP clients may call themselves), lower-cased.
pub fn valid_host_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The reverse zones (`x.y.z.in-addr.arpa.` and shorter) that cover `subnet`: octet-aligned,
/// never wider than the subnet except for subnets longer than /24, which live in one /24.
fn reverse_zones(subnet: Ipv4Net) -> Vec<Ipv4Net> {
    let p = subnet.prefix_len();
    let aligned = if p == 0 { 8 } else { p.div_ceil(8) * 8 }.min(24);
    if aligned <= p {
        return vec![
            Ipv4Net::new(subnet.network(), aligned)
                .expect("valid prefix")
                .trunc(),
        ];
    }
    subnet
        .subnets(aligned)
        .map(|it| it.collect())
        .unwrap_or_default()
}

/// The in-addr.arpa name of an octet-aligned prefix (/8, /16, /24 or /32).
fn arpa_name(net: Ipv4Net) -> Name {
    let o = net.network().octets();
    let n = usize::from(net.prefix_len() / 8);
    let mut s = String::new();
    for octet in o[..n].iter().rev() {
        s.push_str(&octet.to_string());
        s.push('.');
    }
    s.push_str("in-addr.arpa.");
    fqdn(&s).expect("arpa names are valid")
}

/// The address an in-addr.arpa name with four octet labels stands for.
fn arpa_address(name: &Name) -> Option<Ipv4Addr> {
    if name.num_labels() != 6 {
        return None;
    }
    let labels: Vec<&[u8]> = name.iter().collect();
    if !labels[4].eq_ignore_ascii_case(b"in-addr") || !labels[5].eq_ignore_ascii_case(b"arpa") {
        return None;
    }
    let mut octets = [0u8; 4];
    for (i, l) in labels[..4].iter().enumerate() {
        let s = std::str::from_utf8(l).ok()?;
        if s.is_empty() || s.len() > 3 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        octets[3 - i] = s.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

impl Zone {
    /// Builds the zone. `dynamic` are leased machines (hostname, address); names that are not
    /// valid host labels, or that a node or the bootstrapper already owns, are skipped.
    pub fn new(plan: &Plan, dynamic: &[(String, Ipv4Addr)], serial: u32) -> Zone {
        let domain = fqdn(&plan.cluster.domain).unwrap_or_else(Name::root);
        let ns_name = fqdn(&plan.bootstrapper.fqdn).unwrap_or_else(|| domain.clone());
        let rname = Name::from_ascii("hostmaster")
            .ok()
            .and_then(|h| h.append_domain(&domain).ok())
            .unwrap_or_else(|| domain.clone());
        let apex = |name: Name, kind: ApexKind| {
            let soa = SOA::new(
                ns_name.clone(),
                rname.clone(),
                serial,
                3600,
                600,
                86400,
                NEGATIVE_TTL,
            );
            Apex {
                soa: Record::from_rdata(name.clone(), TTL, RData::SOA(soa)),
                ns: Record::from_rdata(name.clone(), TTL, RData::NS(NS(ns_name.clone()))),
                name,
                kind,
            }
        };

        let mut apexes = vec![apex(domain.clone(), ApexKind::Domain)];
        let subnet = plan.network.subnet;
        for z in reverse_zones(subnet) {
            apexes.push(apex(arpa_name(z), ApexKind::Reverse { subnet }));
        }

        let mut zone = Zone {
            apexes,
            owners: HashMap::new(),
            empty_non_terminals: HashSet::new(),
            serial,
            ns_glue: None,
        };
        let add_a = |zone: &mut Zone, name: &Name, ip: Ipv4Addr| {
            let owner = zone.owners.entry(name.clone()).or_default();
            if !owner.a.contains(&ip) {
                owner.a.push(ip);
            }
        };
        let mut ptr_taken: HashSet<Ipv4Addr> = HashSet::new();
        let mut add_ptr = |zone: &mut Zone, ip: Ipv4Addr, target: &Name| {
            if subnet.contains(&ip) && ptr_taken.insert(ip) {
                let rev = Name::from(ip).to_lowercase();
                zone.owners.entry(rev).or_default().ptr.push(target.clone());
            }
        };

        let b = &plan.bootstrapper;
        let mut hostnames: HashSet<Name> = HashSet::new();
        for n in &plan.nodes {
            if let Some(name) = fqdn(&n.fqdn) {
                add_a(&mut zone, &name, n.ip);
                add_ptr(&mut zone, n.ip, &name);
                hostnames.insert(name);
            }
        }
        if let Some(name) = fqdn(&b.fqdn) {
            add_a(&mut zone, &name, b.address);
            add_ptr(&mut zone, b.address, &name);
            zone.ns_glue = Some(Record::from_rdata(
                name.clone(),
                TTL,
                RData::A(A(b.address)),
            ));
            hostnames.insert(name);
        }
        if let Some(name) = fqdn(&format!("registry.{}", plan.cluster.domain)) {
            add_a(&mut zone, &name, b.address);
            hostnames.insert(name);
        }
        if let Some(name) = fqdn(&plan.cluster.endpoint.fqdn) {
            if !domain.zone_of(&name) {
                zone.apexes.push(apex(name.clone(), ApexKind::Exact));
            }
            for ip in &plan.cluster.endpoint.addresses {
                add_a(&mut zone, &name, *ip);
            }
            if let Some(vip) = plan.cluster.endpoint.vip {
                add_ptr(&mut zone, vip, &name);
            }
            hostnames.insert(name);
        }
        for (host, ip) in dynamic {
            let host = host.to_ascii_lowercase();
            if !valid_host_label(&host) {
                continue;
            }
            let Some(name) = fqdn(&format!("{host}.{}", plan.cluster.domain)) else {
                continue;
            };
            if hostnames.insert(name.clone()) {
                add_a(&mut zone, &name, *ip);
                add_ptr(&mut zone, *ip, &name);
            }
        }

        // Every apex owns its SOA/NS; every ancestor of an owner below an apex is an empty
        // non-terminal unless it owns something itself.
        for a in &zone.apexes {
            zone.owners.entry(a.name.clone()).or_default();
        }
        let mut ents = HashSet::new();
        for name in zone.owners.keys() {
            let Some(apex) = zone.apex_of(name) else {
                continue;
            };
            let mut n = name.base_name();
            while n.num_labels() > apex.name.num_labels() {
                if !zone.owners.contains_key(&n) {
                    ents.insert(n.clone());
                }
                n = n.base_name();
            }
        }
        zone.empty_non_terminals = ents;
        zone
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The apex of the zone that owns `name`, if we are authoritative for it.
    fn apex_of(&self, name: &Name) -> Option<&Apex> {
        self.apexes
            .iter()
            .filter(|a| match a.kind {
                ApexKind::Exact => a.name == *name,
                ApexKind::Domain => a.name.zone_of(name),
                ApexKind::Reverse { subnet } => {
                    a.name.zone_of(name) && arpa_address(name).is_none_or(|ip| subnet.contains(&ip))
                }
            })
            .max_by_key(|a| a.name.num_labels())
    }

    /// Whether `name` is inside our authority (answered here, never forwarded).
    pub fn is_authoritative_for(&self, name: &Name) -> bool {
        self.apex_of(name).is_some()
    }

    /// Every (owner name, record type) that has records, for precomputing answers.
    pub fn populated(&self) -> Vec<(Name, RecordType)> {
        let mut out = Vec::new();
        for (name, owner) in &self.owners {
            if !owner.a.is_empty() {
                out.push((name.clone(), RecordType::A));
            }
            if !owner.ptr.is_empty() {
                out.push((name.clone(), RecordType::PTR));
            }
        }
        for a in &self.apexes {
            out.push((a.name.clone(), RecordType::SOA));
            out.push((a.name.clone(), RecordType::NS));
        }
        out
    }

    /// Every name that exists in the zone (owners and empty non-terminals).
    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.owners.keys().chain(self.empty_non_terminals.iter())
    }

    /// Answers the first question of `request` if it lies in our authority; `None` means the
    /// name is someone else's (forward it or refuse). The response echoes the question as
    /// asked (case kept), copies ID, RD and CD, sets AA; EDNS is left to the caller.
    pub fn answer(&self, request: &Message) -> Option<Message> {
        let query = request.queries.first()?;
        let qname = &query.name;
        let apex = self.apex_of(qname)?;

        let mut resp = Message::response(request.metadata.id, OpCode::Query);
        resp.metadata.message_type = MessageType::Response;
        resp.metadata.recursion_desired = request.metadata.recursion_desired;
        resp.metadata.checking_disabled = request.metadata.checking_disabled;
        resp.add_query(query.clone());

        if query.query_class != DNSClass::IN {
            resp.metadata.response_code = ResponseCode::Refused;
            return Some(resp);
        }
        resp.metadata.authoritative = true;
        let qtype = query.query_type;
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // No zone transfers: the zone is derived from the description, not replicated.
            resp.metadata.authoritative = false;
            resp.metadata.response_code = ResponseCode::Refused;
            return Some(resp);
        }

        let owner = self.owners.get(qname);
        if owner.is_none() && !self.empty_non_terminals.contains(qname) {
            resp.metadata.response_code = ResponseCode::NXDomain;
            resp.add_authority(self.negative_soa(apex));
            return Some(resp);
        }
        let at_apex = apex.name == *qname;
        let mut answers = Vec::new();
        let rename = |r: &Record| {
            let mut r = r.clone();
            r.name = qname.clone();
            r
        };
        if let Some(owner) = owner {
            let any = qtype == RecordType::ANY;
            if at_apex && (any || qtype == RecordType::SOA) {
                answers.push(rename(&apex.soa));
            }
            if at_apex && (any || qtype == RecordType::NS) {
                answers.push(rename(&apex.ns));
                if qtype == RecordType::NS
                    && let Some(glue) = &self.ns_glue
                    && self.apex_of(&glue.name).is_some()
                {
                    resp.add_additional(glue.clone());
                }
            }
            if any || qtype == RecordType::A {
                for ip in &owner.a {
                    answers.push(Record::from_rdata(qname.clone(), TTL, RData::A(A(*ip))));
                }
            }
            if any || qtype == RecordType::PTR {
                for target in &owner.ptr {
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        TTL,
                        RData::PTR(PTR(target.clone())),
                    ));
                }
            }
        }
        if answers.is_empty() {
            // NODATA: the name exists, the type does not.
            resp.add_authority(self.negative_soa(apex));
        } else {
            resp.add_answers(answers);
        }
        Some(resp)
    }

    /// The SOA for a negative answer: its TTL is the negative-caching time (RFC 2308).
    fn negative_soa(&self, apex: &Apex) -> Record {
        let mut soa = apex.soa.clone();
        soa.ttl = NEGATIVE_TTL.min(TTL);
        soa
    }
}

#[cfg(test)]
pub(crate) mod tests;
