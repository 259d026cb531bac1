//! End-to-end boots through Slipway with real firmware under QEMU (TCG).

mod common;
#[path = "common/vm.rs"]
mod vm;

use std::time::Duration;

use common::*;
use vm::*;

#[test]
fn dev_direct_boot() {
    if !netns_available() || !vm_tools_available() {
        return;
    }
    let _ = guest();
    let lan = Lan::new("e2e");
    let srv = lan.host("srv", Some("10.20.0.2/24"), None);
    let desc = TestDesc::default();
    let slipway = Slipway::start(&srv, &desc.yaml(), &[]);
    let dir = std::path::Path::new("/tmp/e2e-scratch");
    radvd(&srv, dir);
    let append = "console=ttyS0,115200 panic=5 slipway.config=http://10.20.0.2:8080/config/52-54-00-00-00-11?token=abc slipway.report=http://10.20.0.2:8080/report/52-54-00-00-00-11 slipway.token=abc slipway.bootstrapper=slipway.lab.test";
    let mut v = Vm::start(&lan, dir, "direct", "52:54:00:00:00:11", &Firmware::Direct { append: append.into() }, None);
    v.wait_exit(Duration::from_secs(120));
    eprintln!("{:?}\n{}", v.exited, v.marks().join("\n"));
    drop(slipway);
}
