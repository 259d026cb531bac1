//! The DHCP request path (parse -> decide -> encode) on arbitrary bytes, in authoritative
//! mode with an enrolling pool and in ProxyDHCP mode, on both server ports. It must never
//! panic, and every reply must decode and carry the request's xid.
#![no_main]

use std::sync::OnceLock;

use dhcproto::Decodable;
use dhcproto::v4::Message;
use libfuzzer_sys::fuzz_target;
use slipway::dhcp::boot::BootFiles;
use slipway::dhcp::engine::{Ctx, Port, respond};
use slipway::dhcp::leases::LeaseTable;
use slipway::plan::Plan;

const DESC: &str = include_str!("../../cluster-desc.example.yaml");

fn plans() -> &'static [Plan; 2] {
    static PLANS: OnceLock<[Plan; 2]> = OnceLock::new();
    PLANS.get_or_init(|| {
        let enroll = DESC.replace(
            "unknown_machines: ignore",
            "unknown_machines: enroll-worker",
        );
        let proxy = DESC.replace("mode: authoritative", "mode: proxy");
        [enroll, proxy].map(|text| {
            let d =
                slipway::desc::parse_str("cluster-desc.yaml", &text).expect("valid description");
            Plan::from_desc(&d)
        })
    })
}

fuzz_target!(|data: &[u8]| {
    for plan in plans() {
        for port in [Port::Server, Port::Proxy] {
            let approved = std::collections::HashSet::new();
            let ctx = Ctx {
                plan,
                approved: &approved,
                boot: BootFiles { arm64: true },
                ntp_resolved: &[],
                now: 1_000_000,
                now_millis: 1_000_000_000,
            };
            let mut table = LeaseTable::new(plan.network.pool);
            if let Ok((_, Some(wire))) = respond(&ctx, &mut table, data, port) {
                let reply = Message::from_bytes(&wire).expect("replies decode");
                let request = Message::from_bytes(data).expect("a replied-to request decoded");
                assert_eq!(reply.xid(), request.xid());
            }
        }
    }
});
