use std::net::Ipv4Addr;
use std::str::FromStr;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use super::*;
use crate::plan::Plan;

pub(crate) fn example() -> String {
    include_str!("../../../cluster-desc.example.yaml").to_string()
}

pub(crate) fn plan_from(text: &str) -> Plan {
    let d = crate::desc::parse_str("cluster-desc.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    Plan::from_desc(&d)
}

fn zone() -> Zone {
    Zone::new(&plan_from(&example()), &[], 7)
}

fn ask(zone: &Zone, name: &str, qtype: RecordType) -> Option<Message> {
    let mut req = Message::query();
    req.metadata.recursion_desired = true;
    req.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    zone.answer(&req)
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn ptrs(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .collect()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn a_records_for_nodes_bootstrapper_registry_and_endpoint() {
    let z = zone();
    for (name, want) in [
        ("cp-1.rack1.example.internal.", vec![ip("10.20.0.11")]),
        ("gpu-2.rack1.example.internal.", vec![ip("10.20.0.32")]),
        ("slipway.rack1.example.internal.", vec![ip("10.20.0.2")]),
        ("registry.rack1.example.internal.", vec![ip("10.20.0.2")]),
        ("api.rack1.example.internal.", vec![ip("10.20.0.10")]),
    ] {
        let m = ask(&z, name, RecordType::A).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.metadata.authoritative, "{name}");
        assert!(m.metadata.recursion_desired);
        assert_eq!(addrs(&m), want, "{name}");
        assert_eq!(m.answers[0].ttl, TTL);
        assert_eq!(m.queries[0].name, Name::from_ascii(name).unwrap());
    }
}

#[test]
fn names_are_case_insensitive_and_the_question_keeps_its_case() {
    let z = zone();
    let m = ask(&z, "CP-1.Rack1.EXAMPLE.internal.", RecordType::A).unwrap();
    assert_eq!(addrs(&m), vec![ip("10.20.0.11")]);
    assert_eq!(m.queries[0].name.to_ascii(), "CP-1.Rack1.EXAMPLE.internal.");
    assert_eq!(m.answers[0].name.to_ascii(), "CP-1.Rack1.EXAMPLE.internal.");
}

#[test]
fn endpoint_without_vip_resolves_to_every_control_plane_node() {
    let text = example().replace("    vip: 10.20.0.10\n", "");
    let z = Zone::new(&plan_from(&text), &[], 1);
    let m = ask(&z, "api.rack1.example.internal.", RecordType::A).unwrap();
    assert_eq!(
        addrs(&m),
        vec![ip("10.20.0.11"), ip("10.20.0.12"), ip("10.20.0.13")]
    );
}

#[test]
fn endpoint_outside_the_domain_is_answered_for_that_name_only() {
    let text = example().replace("    name: api\n", "    name: k8s.corp.example\n");
    let z = Zone::new(&plan_from(&text), &[], 1);
    let m = ask(&z, "k8s.corp.example.", RecordType::A).unwrap();
    assert_eq!(addrs(&m), vec![ip("10.20.0.10")]);
    assert!(ask(&z, "www.k8s.corp.example.", RecordType::A).is_none());
    assert!(ask(&z, "corp.example.", RecordType::A).is_none());
    let m = ask(&z, "k8s.corp.example.", RecordType::AAAA).unwrap();
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
}

#[test]
fn ptr_for_named_addresses_in_the_subnet() {
    let z = zone();
    for (name, want) in [
        ("11.0.20.10.in-addr.arpa.", "cp-1.rack1.example.internal."),
        ("2.0.20.10.in-addr.arpa.", "slipway.rack1.example.internal."),
        ("10.0.20.10.in-addr.arpa.", "api.rack1.example.internal."),
        ("31.0.20.10.IN-ADDR.ARPA.", "gpu-1.rack1.example.internal."),
    ] {
        let m = ask(&z, name, RecordType::PTR).unwrap();
        assert_eq!(ptrs(&m), vec![want.to_string()], "{name}");
        assert!(m.metadata.authoritative);
    }
}

#[test]
fn unnamed_address_in_the_subnet_is_nxdomain_with_the_reverse_soa() {
    let z = zone();
    let m = ask(&z, "99.0.20.10.in-addr.arpa.", RecordType::PTR).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
    let soa = &m.authorities[0];
    assert_eq!(soa.name.to_ascii(), "0.20.10.in-addr.arpa.");
    assert_eq!(soa.ttl, NEGATIVE_TTL);
    // Junk under the reverse apex is ours too.
    let m = ask(&z, "x.11.0.20.10.in-addr.arpa.", RecordType::PTR).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn nxdomain_and_nodata_in_the_forward_zone() {
    let z = zone();
    let m = ask(&z, "nope.rack1.example.internal.", RecordType::A).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    match &m.authorities[0].data {
        RData::SOA(soa) => {
            assert_eq!(soa.serial, 7);
            assert_eq!(soa.mname.to_ascii(), "slipway.rack1.example.internal.");
            assert_eq!(soa.minimum, NEGATIVE_TTL);
        }
        other => panic!("expected SOA, got {other:?}"),
    }
    assert_eq!(m.authorities[0].name.to_ascii(), "rack1.example.internal.");

    for (name, qtype) in [
        ("cp-1.rack1.example.internal.", RecordType::AAAA),
        ("cp-1.rack1.example.internal.", RecordType::MX),
        ("rack1.example.internal.", RecordType::A),
    ] {
        let m = ask(&z, name, qtype).unwrap();
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    }
}

#[test]
fn empty_non_terminals_are_nodata() {
    // A /16 subnet: one reverse zone 20.10.in-addr.arpa with 0.20.10... as an empty node.
    let text = example().replace("subnet: 10.20.0.0/24", "subnet: 10.20.0.0/16");
    let z = Zone::new(&plan_from(&text), &[], 1);
    let m = ask(&z, "0.20.10.in-addr.arpa.", RecordType::PTR).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].name.to_ascii(), "20.10.in-addr.arpa.");
    let m = ask(&z, "7.20.10.in-addr.arpa.", RecordType::PTR).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(&z, "11.0.20.10.in-addr.arpa.", RecordType::PTR).unwrap();
    assert_eq!(ptrs(&m), vec!["cp-1.rack1.example.internal.".to_string()]);
}

#[test]
fn soa_and_ns_at_the_apexes() {
    let z = zone();
    let m = ask(&z, "rack1.example.internal.", RecordType::SOA).unwrap();
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    let m = ask(&z, "rack1.example.internal.", RecordType::NS).unwrap();
    match &m.answers[0].data {
        RData::NS(ns) => assert_eq!(ns.0.to_ascii(), "slipway.rack1.example.internal."),
        other => panic!("expected NS, got {other:?}"),
    }
    let mut glue = Message::query();
    glue.answers = m.additionals.clone();
    assert_eq!(addrs(&glue), vec![ip("10.20.0.2")]);
    let m = ask(&z, "0.20.10.in-addr.arpa.", RecordType::SOA).unwrap();
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    let m = ask(&z, "rack1.example.internal.", RecordType::ANY).unwrap();
    assert_eq!(m.answers.len(), 2);
}

#[test]
fn other_names_are_not_ours() {
    let z = zone();
    for name in [
        "example.com.",
        "example.internal.",
        "internal.",
        ".",
        "8.8.8.8.in-addr.arpa.",
        "1.20.10.in-addr.arpa.",
        "20.10.in-addr.arpa.",
        "in-addr.arpa.",
    ] {
        assert!(ask(&z, name, RecordType::A).is_none(), "{name}");
    }
}

#[test]
fn transfers_and_other_classes_are_refused() {
    let z = zone();
    let m = ask(&z, "rack1.example.internal.", RecordType::AXFR).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let mut req = Message::query();
    let mut q = Query::query(
        Name::from_str("cp-1.rack1.example.internal.").unwrap(),
        RecordType::A,
    );
    q.set_query_class(DNSClass::CH);
    req.add_query(q);
    assert_eq!(
        z.answer(&req).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
}

#[test]
fn dynamic_hosts_get_a_and_ptr_but_never_take_a_node_name() {
    let plan = plan_from(&example());
    let hosts = vec![
        ("Laptop".to_string(), ip("10.20.0.201")),
        ("cp-1".to_string(), ip("10.20.0.202")),
        ("bad name!".to_string(), ip("10.20.0.203")),
        ("-dash".to_string(), ip("10.20.0.204")),
        ("outside".to_string(), ip("192.0.2.9")),
    ];
    let z = Zone::new(&plan, &hosts, 2);
    let m = ask(&z, "laptop.rack1.example.internal.", RecordType::A).unwrap();
    assert_eq!(addrs(&m), vec![ip("10.20.0.201")]);
    let m = ask(&z, "201.0.20.10.in-addr.arpa.", RecordType::PTR).unwrap();
    assert_eq!(ptrs(&m), vec!["laptop.rack1.example.internal.".to_string()]);
    let m = ask(&z, "cp-1.rack1.example.internal.", RecordType::A).unwrap();
    assert_eq!(addrs(&m), vec![ip("10.20.0.11")]);
    let m = ask(&z, "202.0.20.10.in-addr.arpa.", RecordType::PTR).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(&z, "outside.rack1.example.internal.", RecordType::A).unwrap();
    assert_eq!(addrs(&m), vec![ip("192.0.2.9")]);
    assert!(ask(&z, "9.2.0.192.in-addr.arpa.", RecordType::PTR).is_none());
    assert_eq!(z.serial(), 2);
}

#[test]
fn reverse_zones_cover_the_subnet() {
    let names = |s: &str| -> Vec<String> {
        reverse_zones(s.parse().unwrap())
            .into_iter()
            .map(|n| arpa_name(n).to_ascii())
            .collect()
    };
    assert_eq!(names("10.20.0.0/24"), ["0.20.10.in-addr.arpa."]);
    assert_eq!(names("10.20.0.128/25"), ["0.20.10.in-addr.arpa."]);
    assert_eq!(names("10.20.0.0/16"), ["20.10.in-addr.arpa."]);
    assert_eq!(names("10.0.0.0/8"), ["10.in-addr.arpa."]);
    assert_eq!(
        names("10.20.4.0/22"),
        [
            "4.20.10.in-addr.arpa.",
            "5.20.10.in-addr.arpa.",
            "6.20.10.in-addr.arpa.",
            "7.20.10.in-addr.arpa."
        ]
    );
    assert_eq!(names("172.16.0.0/12").len(), 16);
    assert_eq!(
        arpa_address(&Name::from_str("4.3.2.1.in-addr.arpa.").unwrap()),
        Some(ip("1.2.3.4"))
    );
    assert_eq!(
        arpa_address(&Name::from_str("4.3.2.256.in-addr.arpa.").unwrap()),
        None
    );
    assert_eq!(
        arpa_address(&Name::from_str("3.2.1.in-addr.arpa.").unwrap()),
        None
    );
}

#[test]
fn a_25_subnet_owns_only_its_addresses_in_the_24_zone() {
    let text = example()
        .replace("subnet: 10.20.0.0/24", "subnet: 10.20.0.0/25")
        .replace("start: 10.20.0.200", "start: 10.20.0.100")
        .replace("end: 10.20.0.250", "end: 10.20.0.120");
    let z = Zone::new(&plan_from(&text), &[], 1);
    let m = ask(&z, "99.0.20.10.in-addr.arpa.", RecordType::PTR).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(ask(&z, "200.0.20.10.in-addr.arpa.", RecordType::PTR).is_none());
}
