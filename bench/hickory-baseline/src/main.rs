//! Baseline: hickory-server 0.26 (Server + Catalog + InMemoryZoneHandler) serving the same
//! 1000 A records as bench/dns.sh, for a throughput comparison
//! (why Slipway answers UDP itself). Not part of Slipway: `cargo run --release -- ADDR:PORT`.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:5357".into());
    let origin = Name::from_ascii("bench.test.").unwrap();
    let mut records = BTreeMap::new();
    let mut add = |r: Record| {
        let key = RrKey::new(LowerName::new(&r.name), r.record_type());
        records
            .entry(key)
            .or_insert_with(|| RecordSet::new(r.name.clone(), r.record_type(), 1))
            .insert(r, 1);
    };
    let ns = Name::from_ascii("slipway.bench.test.").unwrap();
    add(Record::from_rdata(
        origin.clone(),
        60,
        RData::SOA(SOA::new(
            ns.clone(),
            Name::from_ascii("hostmaster.bench.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            30,
        )),
    ));
    add(Record::from_rdata(origin.clone(), 60, RData::NS(NS(ns))));
    for i in 1..=1000u32 {
        let n = i + 9;
        let name = Name::from_ascii(format!("node-{i:04}.bench.test.")).unwrap();
        add(Record::from_rdata(
            name,
            60,
            RData::A(A(Ipv4Addr::new(10, 20, (n / 256) as u8, (n % 256) as u8))),
        ));
    }
    let zone = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
        origin.clone(),
        records,
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .unwrap();
    let mut catalog = Catalog::new();
    catalog.upsert(
        LowerName::new(&origin),
        vec![Arc::new(zone) as Arc<dyn ZoneHandler>],
    );
    let mut server = Server::new(catalog);
    server.register_socket(tokio::net::UdpSocket::bind(&addr).await.unwrap());
    server.register_listener(
        tokio::net::TcpListener::bind(&addr).await.unwrap(),
        Duration::from_secs(10),
        4096,
    );
    eprintln!("hickory-server serving on {addr}");
    server.block_until_done().await.unwrap();
}
