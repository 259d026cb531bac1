//! The DNS request path (parse -> zone answer / forward decision -> encode) on arbitrary
//! bytes, from a client inside and one outside the cluster, over UDP and TCP. It must never
//! panic, and every reply must carry the query's ID and fit the transport.
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use slipway::dns::{Action, Snapshot, Transport, handle};

const DESC: &str = include_str!("../../cluster-desc.example.yaml");

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let d = slipway::desc::parse_str("cluster-desc.yaml", DESC).expect("example is valid");
        let plan = slipway::plan::Plan::from_desc(&d);
        let hosts = vec![("laptop".to_string(), "10.20.0.201".parse().unwrap())];
        Snapshot::new(&plan, &hosts, (1, 1))
    })
}

fuzz_target!(|data: &[u8]| {
    let snap = snapshot();
    let mut out = Vec::new();
    let clients: [IpAddr; 2] = ["10.20.0.50".parse().unwrap(), "192.168.77.5".parse().unwrap()];
    for (client, transport) in [(clients[0], Transport::Udp), (clients[1], Transport::Tcp)] {
        match handle(snap, data, client, transport, &mut out) {
            Action::Reply => {
                assert!(out.len() >= 12, "a reply has a header");
                assert_eq!(out[..2], data[..2], "a reply carries the query ID");
                if transport == Transport::Udp {
                    assert!(out.len() <= 1232, "UDP reply of {} bytes", out.len());
                }
            }
            Action::Forward(req) => assert_eq!(req.packet, data),
            Action::Drop => assert!(out.is_empty()),
        }
    }
});
