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

/// Secrets from a real PKI in a temporary state directory.
fn secrets_for(plan: &Plan, node: &crate::plan::NodePlan) -> NodeSecrets {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::pki::Pki::load_or_init(dir.path(), plan, None).unwrap();
    NodeSecrets::from_pki(&pki, node, &"b".repeat(64))
}

/// The installed system's Ignition, decoded from the live installer's config.
fn installed_ignition(live: &serde_json::Value) -> serde_json::Value {
    let f = live["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/opt/slipway/node.ign")
        .expect("node.ign in the installer config");
    serde_json::from_str(&file_text(f)).unwrap()
}

fn file_text(f: &serde_json::Value) -> String {
    use base64::Engine as _;
    let src = f["contents"]["source"].as_str().unwrap();
    let b64 = src.strip_prefix("data:;base64,").expect("inline data URL");
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

fn file<'a>(ign: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    ign["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
}

#[test]
fn flatcar_installer_carries_the_installed_system() {
    let plan = plan();
    let cp = &plan.nodes[0];
    let (text, mime) = Renderer::new(None)
        .unwrap()
        .node_config(&plan, cp, &secrets_for(&plan, cp))
        .unwrap();
    assert_eq!(mime, "application/vnd.coreos.ignition+json");
    let live: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(live["ignition"]["version"], "3.3.0");
    let install = file_text(file(&live, "/opt/slipway/install.sh").unwrap());
    assert!(
        install.contains(&format!("flatcar-install -d {}", cp.install_disk)),
        "{install}"
    );
    assert!(install.contains(&plan.assets.flatcar_base), "{install}");
    let sys = installed_ignition(&live);
    assert_eq!(
        file_text(file(&sys, "/etc/hostname").unwrap()),
        format!("{}\n", cp.hostname)
    );
    let key = file(&sys, "/etc/kubernetes/pki/ca.key").expect("control plane gets the CA key");
    assert_eq!(key["mode"], 0o600);
    let kubeadm = file_text(file(&sys, "/etc/slipway/kubeadm.yaml").unwrap());
    assert!(kubeadm.contains("kind: InitConfiguration"), "{kubeadm}");
    let token_line = kubeadm.lines().find(|l| l.contains("- token:")).unwrap();
    assert!(token_line.len() > 30, "{kubeadm}");
    for up in &plan.registry.upstreams {
        let hosts = file_text(
            file(
                &sys,
                &format!("/etc/containerd/certs.d/{}/hosts.toml", up.name),
            )
            .unwrap(),
        );
        assert!(hosts.contains(&plan.bootstrapper.registry_host), "{hosts}");
    }
    let kubelet = file(&sys, "/opt/bin/kubelet").unwrap();
    assert_eq!(
        kubelet["contents"]["source"],
        format!("{}/kubelet", plan.assets.kubernetes_bin)
    );
    assert!(
        file(&sys, "/etc/slipway/addons/flannel.yaml").is_some(),
        "init node applies flannel"
    );
}

#[test]
fn workers_get_no_ca_key_and_join() {
    let plan = plan();
    let worker = plan
        .nodes
        .iter()
        .find(|n| n.role == crate::desc::Role::Worker)
        .unwrap();
    let r = Renderer::new(None).unwrap();
    let (text, _) = r
        .node_config(&plan, worker, &secrets_for(&plan, worker))
        .unwrap();
    let sys = installed_ignition(&serde_json::from_str(&text).unwrap());
    assert!(file(&sys, "/etc/kubernetes/pki/ca.key").is_none());
    let files = sys["storage"]["files"].as_array().unwrap();
    let inline = files.iter().filter(|f| {
        f["contents"]["source"]
            .as_str()
            .unwrap()
            .starts_with("data:")
    });
    assert!(inline.clone().count() > 10);
    for f in inline {
        assert!(!file_text(f).contains("PRIVATE KEY"), "{}", f["path"]);
    }
    assert!(file(&sys, "/etc/kubernetes/pki/ca.crt").is_some());
    let kubeadm = file_text(file(&sys, "/etc/slipway/kubeadm.yaml").unwrap());
    assert!(kubeadm.contains("kind: JoinConfiguration"), "{kubeadm}");
    assert!(!kubeadm.contains("controlPlane:"), "{kubeadm}");
    assert!(kubeadm.contains("caCertHashes: [\"sha256:"), "{kubeadm}");
    assert!(file(&sys, "/etc/slipway/addons/flannel.yaml").is_none());
}

#[test]
fn gpu_nodes_get_the_nvidia_runtime() {
    let plan = plan();
    let gpu = plan
        .nodes
        .iter()
        .find(|n| n.gpu == crate::desc::Gpu::Nvidia)
        .unwrap();
    let r = Renderer::new(None).unwrap();
    let (text, _) = r.node_config(&plan, gpu, &secrets_for(&plan, gpu)).unwrap();
    let sys = installed_ignition(&serde_json::from_str(&text).unwrap());
    let containerd = file_text(file(&sys, "/etc/containerd/config.toml").unwrap());
    assert!(containerd.contains("runtimes.nvidia]"), "{containerd}");
    let units: Vec<&str> = sys["systemd"]["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert!(units.contains(&"slipway-nvidia-toolkit.service"));
    // 4081.2.0 predates Flatcar's driver extensions: nvidia.service builds the driver.
    assert!(plan.assets.nvidia_drivers_sysext.is_none());
    let nvidia = sys["systemd"]["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "nvidia.service")
        .expect("nvidia.service");
    assert_eq!(nvidia["enabled"], true);
    assert!(file(&sys, "/etc/flatcar/enabled-sysext.conf").is_none());
    let plain = plan
        .nodes
        .iter()
        .find(|n| n.gpu == crate::desc::Gpu::None && n.role == crate::desc::Role::Worker)
        .unwrap();
    let (text, _) = r
        .node_config(&plan, plain, &secrets_for(&plan, plain))
        .unwrap();
    let sys = installed_ignition(&serde_json::from_str(&text).unwrap());
    let containerd = file_text(file(&sys, "/etc/containerd/config.toml").unwrap());
    assert!(!containerd.contains("nvidia"), "{containerd}");
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

/// Each upstream's hosts.toml and what sits beside it, for `plan`'s first worker.
fn certs_d(plan: &Plan) -> Vec<(String, String, Option<String>, String)> {
    let worker = plan
        .nodes
        .iter()
        .find(|n| n.role == crate::desc::Role::Worker)
        .unwrap();
    let secrets = secrets_for(plan, worker);
    let ca = secrets
        .pki_files
        .iter()
        .find(|f| f.path == "ca.crt")
        .unwrap()
        .contents
        .clone();
    let r = Renderer::new(None).unwrap();
    let sys = bundle::installed_system(&r, plan, worker, &secrets, "http://x/report").unwrap();
    let ign = ignition::to_ignition(&sys);
    plan.registry
        .upstreams
        .iter()
        .map(|up| {
            let dir = format!("/etc/containerd/certs.d/{}", up.name);
            let hosts = file_text(file(&ign, &format!("{dir}/hosts.toml")).unwrap());
            let beside = file(&ign, &format!("{dir}/ca.crt")).map(file_text);
            (up.name.clone(), hosts, beside, ca.clone())
        })
        .collect()
}

#[test]
fn registry_tls_points_nodes_at_https_and_the_cluster_ca() {
    let plain = plan();
    assert!(!plain.bootstrapper.registry_tls);
    for (name, hosts, beside, _) in certs_d(&plain) {
        assert!(
            hosts.contains("[host.\"http://10.20.0.2:5000\"]"),
            "{name}: {hosts}"
        );
        assert!(hosts.contains("skip_verify = true"), "{name}: {hosts}");
        assert!(beside.is_none(), "{name}: no CA file without TLS");
    }
    let text =
        include_str!("../../cluster-desc.example.yaml").replace("  tls: false\n", "  tls: true\n");
    let tls = Plan::from_desc(&crate::desc::parse_str("cluster-desc.yaml", &text).unwrap());
    assert!(tls.bootstrapper.registry_tls);
    assert_eq!(tls.bootstrapper.registry_url, "https://10.20.0.2:5000");
    for (name, hosts, beside, ca) in certs_d(&tls) {
        assert!(
            hosts.contains("[host.\"https://10.20.0.2:5000\"]"),
            "{name}: {hosts}"
        );
        assert!(hosts.contains("\n  ca = \"ca.crt\""), "{name}: {hosts}");
        assert!(!hosts.contains("skip_verify"), "{name}: {hosts}");
        assert_eq!(beside.as_deref(), Some(ca.as_str()), "{name}");
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}

#[test]
fn every_node_unpacks_the_cni_plugins_before_the_kubelet() {
    let plan = plan();
    let r = Renderer::new(None).unwrap();
    assert!(
        plan.assets
            .cni_plugins
            .ends_with("/assets/cni/v1.5.1/cni-plugins-linux-amd64-v1.5.1.tgz"),
        "{}",
        plan.assets.cni_plugins
    );
    for node in &plan.nodes {
        let system =
            bundle::installed_system(&r, &plan, node, &secrets_for(&plan, node), "").unwrap();
        let names: Vec<&str> = system.units.iter().map(|u| u.name.as_str()).collect();
        let at = |n: &str| names.iter().position(|u| *u == n).unwrap();
        assert!(
            at("slipway-cni-plugins.service") < at("kubelet.service"),
            "{}: {names:?}",
            node.hostname
        );
        let unit = system.units[at("slipway-cni-plugins.service")]
            .contents
            .clone()
            .unwrap();
        assert!(unit.contains(&plan.assets.cni_plugins), "{unit}");
        assert!(unit.contains("-C \"$$t\""), "systemd-escaped shell: {unit}");
        assert!(
            unit.contains("Before=kubelet.service slipway-join.service"),
            "{unit}"
        );
    }
    // Ubuntu: cloud-init writes the unit and starts it before the join.
    let text = include_str!("../../cluster-desc.example.yaml")
        .replace("profile: flatcar", "profile: ubuntu")
        .replace("version: \"4081.2.0\"", "version: \"24.04\"");
    let ubuntu =
        Plan::from_desc(&crate::desc::parse_str("c.yaml", &text).unwrap_or_else(|e| panic!("{e}")));
    let node = &ubuntu.nodes[3];
    let (cc, _) = r
        .node_config(&ubuntu, node, &secrets_for(&ubuntu, node))
        .unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(cc.trim_start_matches("#cloud-config\n")).unwrap();
    let runcmd: Vec<String> = doc["autoinstall"]["user-data"]["runcmd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let at = |unit: &str| {
        runcmd
            .iter()
            .position(|c| c.contains("enable") && c.contains(unit))
            .unwrap_or_else(|| panic!("{unit} not started: {runcmd:?}"))
    };
    assert!(at("slipway-cni-plugins.service") < at("slipway-join.service"));
}

/// The example description on a Flatcar release with the NVIDIA driver extensions, and
/// the open-module branch.
fn sysext_plan() -> Plan {
    let text = include_str!("../../cluster-desc.example.yaml")
        .replace("version: \"4081.2.0\"", "version: \"4459.2.0\"")
        .replace("nvidia_driver: \"570\"", "nvidia_driver: 570-open");
    Plan::from_desc(&crate::desc::parse_str("c.yaml", &text).unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn flatcar_gpu_nodes_get_the_driver_extension_from_slipway() {
    let plan = sysext_plan();
    let r = Renderer::new(None).unwrap();
    let url = format!(
        "{}/assets/os/flatcar/stable/amd64-usr/4459.2.0/flatcar-nvidia-drivers-570-open.raw",
        plan.bootstrapper.http_base
    );
    assert_eq!(
        plan.assets.nvidia_drivers_sysext.as_deref(),
        Some(url.as_str())
    );
    let image = "/etc/flatcar/sysext/flatcar-nvidia-drivers-570-open-4459.2.0.raw";
    let link = "/etc/extensions/flatcar-nvidia-drivers-570-open.raw";
    for node in &plan.nodes {
        let (text, _) = r
            .node_config(&plan, node, &secrets_for(&plan, node))
            .unwrap();
        let sys = installed_ignition(&serde_json::from_str(&text).unwrap());
        let links = sys["storage"]["links"].as_array().unwrap();
        let nvidia = sys["systemd"]["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "nvidia.service");
        if node.gpu == crate::desc::Gpu::Nvidia {
            let conf = file_text(file(&sys, "/etc/flatcar/enabled-sysext.conf").unwrap());
            assert_eq!(conf, "nvidia-drivers-570-open\n");
            let raw = file(&sys, image).expect("the extension image");
            assert_eq!(raw["contents"]["source"], url.as_str());
            assert!(
                links
                    .iter()
                    .any(|l| l["path"] == link && l["target"] == image),
                "{links:?}"
            );
            // Disabled, so it never tries to build the driver online.
            assert_eq!(nvidia.expect("nvidia.service")["enabled"], false);
        } else {
            assert!(file(&sys, "/etc/flatcar/enabled-sysext.conf").is_none());
            assert!(file(&sys, image).is_none());
            assert!(!links.iter().any(|l| l["path"] == link));
            assert!(nvidia.is_none(), "{}", node.hostname);
        }
    }
}

#[test]
fn ubuntu_gpu_nodes_install_the_server_driver() {
    let text = include_str!("../../cluster-desc.example.yaml")
        .replace("profile: flatcar", "profile: ubuntu")
        .replace("version: \"4081.2.0\"", "version: \"24.04\"");
    let plan =
        Plan::from_desc(&crate::desc::parse_str("c.yaml", &text).unwrap_or_else(|e| panic!("{e}")));
    assert!(plan.assets.nvidia_drivers_sysext.is_none());
    let r = Renderer::new(None).unwrap();
    let user_data = |node: &crate::plan::NodePlan| {
        let (cc, _) = r
            .node_config(&plan, node, &secrets_for(&plan, node))
            .unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(cc.trim_start_matches("#cloud-config\n")).unwrap();
        doc["autoinstall"]["user-data"].clone()
    };
    let driver = [
        "linux-modules-nvidia-570-server-generic",
        "nvidia-headless-no-dkms-570-server",
        "nvidia-utils-570-server",
    ];
    for node in &plan.nodes {
        let ud = user_data(node);
        let packages: Vec<&str> = ud["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(packages.contains(&"containerd"), "{packages:?}");
        let modprobe = ud["runcmd"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c[0] == "modprobe");
        let gpu = node.gpu == crate::desc::Gpu::Nvidia;
        for p in driver {
            assert_eq!(
                packages.contains(&p),
                gpu,
                "{}: {packages:?}",
                node.hostname
            );
        }
        assert_eq!(modprobe, gpu, "{}", node.hostname);
    }
    assert_eq!(
        crate::render::cloud::nvidia_packages("550-open"),
        [
            "linux-modules-nvidia-550-server-open-generic",
            "nvidia-headless-no-dkms-550-server-open",
            "nvidia-utils-550-server",
        ]
    );
}

#[test]
fn the_driver_extension_starts_with_flatcar_4344() {
    use crate::plan::flatcar_has_nvidia_sysext as has;
    assert!(has("4344.0.0") && has("4459.2.0") && has("10000.0.0"));
    assert!(!has("4343.99.9") && !has("4081.2.0"));
    // The file name carries the exact version, which `current` does not tell.
    assert!(!has("current") && !has("4344.0") && !has("4344.0.0.1"));
}
