//! The request path: precomputed answers match the full path byte for byte, the forwarding
//! policy, error replies, malformed input.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::zone::tests::{example, plan_from};
use super::*;

fn snap() -> Snapshot {
    Snapshot::new(&plan_from(&example()), &[], (1, 0))
}

fn query(name: &str, qtype: RecordType, edns: Option<bool>) -> Message {
    let mut m = Message::query();
    m.metadata.id = 0x4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(dnssec_ok) = edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        e.set_dnssec_ok(dnssec_ok);
        m.set_edns(e);
    }
    m
}

fn run(s: &Snapshot, packet: &[u8], client: &str) -> (Action, Vec<u8>) {
    let mut out = Vec::new();
    let a = handle(s, packet, client.parse().unwrap(), Transport::Udp, &mut out);
    (a, out)
}

fn reply(s: &Snapshot, m: &Message, client: &str) -> Message {
    match run(s, &m.to_vec().unwrap(), client) {
        (Action::Reply, out) => Message::from_vec(&out).unwrap(),
        (other, _) => panic!("expected a reply, got {other:?}"),
    }
}

const CLIENT: &str = "10.20.0.50";
const OUTSIDER: &str = "192.168.77.5";

#[test]
fn precomputed_answers_equal_the_full_path() {
    let s = snap();
    assert!(s.fast.len() > 20, "table has {} entries", s.fast.len());
    let mut names: Vec<(Name, RecordType)> = s.zone.populated();
    names.push((
        Name::from_ascii("cp-1.rack1.example.internal.").unwrap(),
        RecordType::AAAA,
    ));
    for (name, qtype) in names {
        for edns in [None, Some(false), Some(true)] {
            let text = name.to_ascii();
            let packet = query(&text, qtype, edns).to_vec().unwrap();
            let mut fast_out = Vec::new();
            assert!(
                fast::answer(&s.fast, &packet, &mut fast_out),
                "{text} {qtype}"
            );
            let mut slow_out = Vec::new();
            let ip: IpAddr = CLIENT.parse().unwrap();
            assert!(matches!(
                slow(&s, &packet, ip, Transport::Udp, &mut slow_out),
                Action::Reply
            ));
            assert_eq!(fast_out, slow_out, "{text} {qtype} {edns:?}");

            // Mixed case: same answer (names compare case-insensitively), case echoed.
            let upper = text.to_ascii_uppercase();
            let packet = query(&upper, qtype, edns).to_vec().unwrap();
            let mut fast_out = Vec::new();
            assert!(fast::answer(&s.fast, &packet, &mut fast_out));
            let mut slow_out = Vec::new();
            slow(&s, &packet, ip, Transport::Udp, &mut slow_out);
            let (f, sl) = (
                Message::from_vec(&fast_out).unwrap(),
                Message::from_vec(&slow_out).unwrap(),
            );
            assert_eq!(f, sl, "{upper} {qtype}");
            assert_eq!(f.queries[0].name.to_ascii(), upper);
        }
    }
}

#[test]
fn answers_carry_id_flags_and_edns() {
    let s = snap();
    let mut q = query("cp-2.rack1.example.internal.", RecordType::A, Some(true));
    q.metadata.checking_disabled = true;
    let r = reply(&s, &q, OUTSIDER);
    assert_eq!(r.metadata.id, 0x4242);
    assert!(r.metadata.authoritative && r.metadata.recursion_desired);
    assert!(r.metadata.checking_disabled);
    assert!(r.metadata.recursion_available, "upstreams are configured");
    let e = r.edns.as_ref().expect("OPT mirrored");
    assert!(e.flags().dnssec_ok);
    assert_eq!(e.max_payload(), EDNS_PAYLOAD);
    assert_eq!(
        r.answers[0].data,
        RData::A(A("10.20.0.12".parse().unwrap()))
    );

    let r = reply(
        &s,
        &query("cp-2.rack1.example.internal.", RecordType::A, None),
        CLIENT,
    );
    assert!(r.edns.is_none());
}

#[test]
fn out_of_zone_names_are_forwarded_only_for_cluster_clients() {
    let s = snap();
    let q = query("www.example.com.", RecordType::A, None)
        .to_vec()
        .unwrap();
    for client in [
        CLIENT,
        "10.244.3.7",
        "10.96.0.10",
        "127.0.0.1",
        "::1",
        "::ffff:10.20.0.9",
    ] {
        match run(&s, &q, client) {
            (Action::Forward(f), _) => {
                assert_eq!(f.packet, q);
                assert_eq!(f.size_limit, Some(512));
                assert_eq!(f.request.metadata.id, 0x4242);
            }
            (other, _) => panic!("{client}: expected forward, got {other:?}"),
        }
    }
    for client in [OUTSIDER, "10.20.1.5", "2001:db8::1"] {
        let before = METRICS.refused.load(Ordering::Relaxed);
        let (a, out) = run(&s, &q, client);
        assert!(matches!(a, Action::Reply), "{client}");
        let r = Message::from_vec(&out).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{client}");
        assert!(!r.metadata.authoritative);
        assert!(r.answers.is_empty());
        assert!(METRICS.refused.load(Ordering::Relaxed) > before);
    }
    // In-zone names are answered for anyone.
    let r = reply(
        &s,
        &query("api.rack1.example.internal.", RecordType::A, None),
        OUTSIDER,
    );
    assert_eq!(r.answers.len(), 1);
}

#[test]
fn no_upstreams_means_refused_for_everyone() {
    let text = example().replace("  upstream_dns: [1.1.1.1, 9.9.9.9]\n", "");
    let s = Snapshot::new(&plan_from(&text), &[], (1, 0));
    let r = reply(
        &s,
        &query("www.example.com.", RecordType::A, None),
        "127.0.0.1",
    );
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.recursion_available);
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let s = snap();
    let good = query("cp-1.rack1.example.internal.", RecordType::A, Some(false))
        .to_vec()
        .unwrap();
    let mut cases: Vec<Vec<u8>> = vec![vec![], vec![0; 5], good[..11].to_vec()];
    for cut in 12..good.len() {
        cases.push(good[..cut].to_vec());
    }
    // A response is never answered (no reflection loops).
    let mut response = good.clone();
    response[2] |= 0x80;
    cases.push(response);
    // A label running past the end.
    let mut long_label = good.clone();
    long_label[12] = 60;
    cases.push(long_label);
    for c in cases {
        let before = METRICS.malformed();
        let (a, out) = run(&s, &c, CLIENT);
        assert!(matches!(a, Action::Drop), "{c:?} gave {a:?}");
        assert!(out.is_empty());
        assert!(METRICS.malformed() > before);
    }
}

#[test]
fn error_replies_formerr_notimp_badvers() {
    let s = snap();
    let mut two = query("cp-1.rack1.example.internal.", RecordType::A, None);
    two.add_query(Query::query(
        Name::from_ascii("cp-2.rack1.example.internal.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        reply(&s, &two, CLIENT).metadata.response_code,
        ResponseCode::FormErr
    );
    let mut none = query("cp-1.rack1.example.internal.", RecordType::A, None);
    none.queries.clear();
    assert_eq!(
        reply(&s, &none, CLIENT).metadata.response_code,
        ResponseCode::FormErr
    );

    let mut notify = query("rack1.example.internal.", RecordType::SOA, None);
    notify.metadata.op_code = OpCode::Notify;
    let r = reply(&s, &notify, CLIENT);
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(r.metadata.op_code, OpCode::Notify);

    let mut v1 = query("cp-1.rack1.example.internal.", RecordType::A, Some(false));
    v1.edns.as_mut().unwrap().set_version(1);
    let r = reply(&s, &v1, CLIENT);
    // BADVERS and BADSIG share code 16; the decoder names it BADSIG.
    assert_eq!(u16::from(r.metadata.response_code), 16);
    assert!(r.answers.is_empty());
    assert!(r.edns.is_some());
}

#[test]
fn oversized_udp_answers_are_truncated_to_the_question() {
    let q = query("big.rack1.example.internal.", RecordType::A, None);
    let mut resp = error_reply(&q, ResponseCode::NoError);
    for i in 0..100u8 {
        resp.add_answer(Record::from_rdata(
            q.queries[0].name.clone(),
            60,
            RData::A(A([10, 20, 1, i].into())),
        ));
    }
    let mut out = Vec::new();
    assert!(write_limited(&resp, 512, &mut out));
    assert!(out.len() <= 512);
    let m = Message::from_vec(&out).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert_eq!(m.queries, q.queries);
    assert!(write_limited(&resp, 65535, &mut out));
    assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 100);
}

#[test]
fn dynamic_hosts_are_answered_from_the_fast_table_too() {
    let hosts = vec![("printer".to_string(), "10.20.0.210".parse().unwrap())];
    let s = Snapshot::new(&plan_from(&example()), &hosts, (1, 1));
    let packet = query("printer.rack1.example.internal.", RecordType::A, None)
        .to_vec()
        .unwrap();
    let mut out = Vec::new();
    assert!(fast::answer(&s.fast, &packet, &mut out));
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(
        m.answers[0].data,
        RData::A(A("10.20.0.210".parse().unwrap()))
    );
}
