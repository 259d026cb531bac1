//! Bundle -> cloud-config (Ubuntu). Written as JSON after the `#cloud-config` line: JSON is
//! YAML, and serde_json escapes every string correctly.

use serde_json::{Value, json};

use super::bundle::{Bundle, Contents};
use crate::plan::{NodePlan, Plan};

pub fn to_cloud_config(plan: &Plan, node: &NodePlan, b: &Bundle) -> String {
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
    runcmd.push(json!(["systemctl", "daemon-reload"]));
    for u in b.units.iter().filter(|u| u.enabled) {
        // Skip units the OS does not have (nvidia.service is Flatcar's).
        if u.contents.is_some() || u.name == "containerd.service" {
            runcmd.push(json!(["systemctl", "enable", "--now", u.name]));
        }
    }
    let doc = json!({
        "hostname": node.hostname,
        "fqdn": node.fqdn,
        "timezone": plan.os.timezone,
        "ssh_authorized_keys": b.ssh_keys,
        "package_update": false,
        "packages": ["containerd", "conntrack", "socat", "curl"],
        "write_files": write_files,
        "runcmd": runcmd,
    });
    format!(
        "#cloud-config\n{}\n",
        serde_json::to_string_pretty(&doc).expect("JSON values serialize")
    )
}
