use super::*;

fn plan() -> Plan {
    let text = include_str!("../../cluster-desc.example.yaml");
    Plan::from_desc(
        &crate::desc::parse_str("cluster-desc.yaml", text).unwrap_or_else(|e| panic!("{e}")),
    )
}

#[test]
fn install_script_loads_kernel_and_initrd_with_the_arguments() {
    let plan = plan();
    let node = &plan.nodes[0];
    let r = Renderer::new(None).unwrap();
    let args = crate::boot::install_kernel_args(&plan, node, "TOKEN");
    let s = r.install_script(&plan, node, &args).unwrap();
    assert!(s.starts_with("#!ipxe\n"), "{s}");
    let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
    assert!(kernel.contains(&node.boot.kernel), "{kernel}");
    assert!(kernel.contains("initrd=initrd.img"), "{kernel}");
    assert!(kernel.contains(&format!("slipway.config={}?token=TOKEN", node.boot.config)));
    assert!(kernel.contains(&format!("slipway.bootstrapper={}", plan.bootstrapper.fqdn)));
    let initrd = s.lines().find(|l| l.starts_with("initrd ")).unwrap();
    assert!(
        initrd.contains(&format!(" {} ", node.boot.initrd)),
        "{initrd}"
    );
    assert!(s.contains(&format!(
        "chain --replace --autofree {}",
        node.boot.ipxe_script
    )));
}

#[test]
fn local_disk_script_sanboots_on_bios_and_exits_on_efi() {
    let plan = plan();
    let s = Renderer::new(None)
        .unwrap()
        .local_disk_script(&plan, &plan.nodes[0])
        .unwrap();
    assert!(s.contains("sanboot --no-describe --drive 0x80"), "{s}");
    assert!(s.contains("iseq ${platform} efi"), "{s}");
    assert!(!s.contains("kernel "), "no installer: {s}");
}

#[test]
fn ignition_is_json_with_the_hostname() {
    let plan = plan();
    let node = &plan.nodes[0];
    let (text, mime) = Renderer::new(None)
        .unwrap()
        .node_config(&plan, node)
        .unwrap();
    assert_eq!(mime, "application/vnd.coreos.ignition+json");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(v["ignition"]["version"], "3.4.0");
    assert_eq!(
        v["storage"]["files"][0]["contents"]["source"],
        format!("data:,{}", node.hostname)
    );
}

#[test]
fn overrides_replace_a_builtin_and_broken_ones_fail_early() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ipxe")).unwrap();
    std::fs::write(
        dir.path().join("ipxe/local-disk.ipxe"),
        "#!ipxe\necho custom {{ node.hostname }}\nexit\n",
    )
    .unwrap();
    let plan = plan();
    let r = Renderer::new(Some(dir.path())).unwrap();
    let s = r.local_disk_script(&plan, &plan.nodes[0]).unwrap();
    assert_eq!(
        s,
        format!("#!ipxe\necho custom {}\nexit\n", plan.nodes[0].hostname)
    );
    // Templates without an override stay built in.
    assert!(
        r.hold_script("http://x/boot/a.ipxe", "wait", 30)
            .unwrap()
            .contains("sleep 30")
    );

    std::fs::write(dir.path().join("ipxe/hold.ipxe"), "{% if %}").unwrap();
    let err = Renderer::new(Some(dir.path()))
        .err()
        .expect("a broken template is refused");
    assert!(err.to_string().contains("ipxe/hold.ipxe"), "{err}");
}

#[test]
fn percent_encoding_of_data_urls() {
    assert_eq!(percent_encode("cp-1.a_b~"), "cp-1.a_b~");
    assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
}
