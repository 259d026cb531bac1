//! Bundle -> cloud-config (Ubuntu): the NoCloud `user-data` is an autoinstall document
//! (Subiquity installs to the node's disk) whose `user-data` section is the installed
//! system's cloud-config with the cluster content. Written as JSON after the
//! `#cloud-config` line: JSON is YAML, and serde_json escapes every string correctly.

use serde_json::{Value, json};

use super::bundle::{Bundle, Contents};
use crate::desc::Gpu;
use crate::plan::{NodePlan, Plan};

/// The installed system's cloud-config (as a value, to nest inside the autoinstall).
pub fn installed_system(plan: &Plan, node: &NodePlan, b: &Bundle) -> Value {
    let mut write_files: Vec<Value> = Vec::new();
    let mut runcmd: Vec<Value> = Vec::new();
    for f in &b.files {
        match &f.contents {
            Contents::Inline(text) => write_files.push(json!({
                "path": f.path,
                "permissions": format!("{:04o}", f.mode),
                "owner": "root:root",
                "content": text,
            })),
            Contents::Remote(url) => {
                runcmd.push(json!([
                    "curl",
                    "-fsS",
                    "--retry",
                    "10",
                    "--create-dirs",
                    "-o",
                    f.path,
                    url
                ]));
                runcmd.push(json!(["chmod", format!("{:o}", f.mode), f.path]));
            }
        }
    }
    for u in &b.units {
        if let Some(c) = &u.contents {
            write_files.push(json!({
                "path": format!("/etc/systemd/system/{}", u.name),
                "permissions": "0644",
                "content": c,
            }));
        }
        for (name, c) in &u.dropins {
            write_files.push(json!({
                "path": format!("/etc/systemd/system/{}.d/{name}", u.name),
                "permissions": "0644",
                "content": c,
            }));
        }
    }
    for (path, target) in &b.links {
        runcmd.push(json!(["ln", "-sf", target, path]));
    }
    let mut packages = vec![
        json!("containerd"),
        json!("conntrack"),
        json!("socat"),
        json!("curl"),
    ];
    if node.gpu == Gpu::Nvidia {
        packages.extend(
            nvidia_packages(&plan.os.nvidia_driver)
                .into_iter()
                .map(Value::from),
        );
        // Installed by `packages` before runcmd; loaded before the toolkit and containerd.
        runcmd.push(json!(["modprobe", "-a", "nvidia", "nvidia_uvm"]));
    }
    runcmd.push(json!(["systemctl", "daemon-reload"]));
    for u in b.units.iter().filter(|u| u.enabled) {
        // Skip units the OS does not have (nvidia.service is Flatcar's).
        if u.contents.is_some() || u.name == "containerd.service" {
            runcmd.push(json!(["systemctl", "enable", "--now", u.name]));
        }
    }
    json!({
        "hostname": node.hostname,
        "fqdn": node.fqdn,
        "timezone": plan.os.timezone,
        "ssh_authorized_keys": b.ssh_keys,
        "package_update": false,
        "packages": packages,
        "write_files": write_files,
        "runcmd": runcmd,
    })
}

/// Ubuntu's NVIDIA server driver for `branch` (`570` or `570-open`) from the archive's
/// restricted component: the prebuilt, signed kernel modules for the generic kernel (no
/// DKMS build on the node), the user-space driver without DKMS, and nvidia-smi.
pub fn nvidia_packages(branch: &str) -> Vec<String> {
    let (digits, open) = match branch.strip_suffix("-open") {
        Some(d) => (d, "-open"),
        None => (branch, ""),
    };
    vec![
        format!("linux-modules-nvidia-{digits}-server{open}-generic"),
        format!("nvidia-headless-no-dkms-{digits}-server{open}"),
        format!("nvidia-utils-{digits}-server"),
    ]
}

/// A shell command that reports `state` to Slipway with the node's token.
fn report_cmd(report_url: &str, token: &str, state: &str, message: &str) -> Value {
    json!([
        "curl",
        "-fsS",
        "-m",
        "20",
        "--retry",
        "5",
        "--data-urlencode",
        format!("token={token}"),
        "--data-urlencode",
        format!("state={state}"),
        "--data-urlencode",
        format!("message={message}"),
        report_url
    ])
}

/// NoCloud `user-data`: the autoinstall that writes Ubuntu to the node's disk, reports
/// `installing`/`installed`, and hands the installed system its cloud-config.
pub fn autoinstall(
    plan: &Plan,
    node: &NodePlan,
    b: &Bundle,
    boot_token: &str,
    report_url: &str,
) -> String {
    let doc = json!({
        "autoinstall": {
            "version": 1,
            "storage": { "layout": { "name": "direct", "match": { "path": node.install_disk } } },
            "ssh": {
                "install-server": true,
                "allow-pw": false,
                "authorized-keys": b.ssh_keys,
            },
            "timezone": plan.os.timezone,
            "early-commands": [report_cmd(report_url, boot_token, "installing",
                &format!("autoinstall of Ubuntu {} to {}", plan.os.version, node.install_disk))],
            "late-commands": [report_cmd(report_url, boot_token, "installed",
                &format!("Ubuntu {} on {}", plan.os.version, node.install_disk))],
            "user-data": installed_system(plan, node, b),
            "shutdown": "reboot",
        }
    });
    format!(
        "#cloud-config\n{}\n",
        serde_json::to_string_pretty(&doc).expect("JSON values serialize")
    )
}

/// NoCloud `meta-data`: a stable instance id per node and install.
pub fn meta_data(node: &NodePlan) -> String {
    format!(
        "instance-id: slipway-{}\nlocal-hostname: {}\n",
        node.mac.url_form(),
        node.hostname
    )
}
