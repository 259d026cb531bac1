//! What a node gets, independent of the OS profile: files (inline or downloaded from
//! Slipway), systemd units, links and SSH keys. Each file's text comes from an overridable
//! template; this module decides which files a node gets, by role and GPU, and the two
//! serializers turn the bundle into Ignition (Flatcar) or cloud-config (Ubuntu).

use serde::Serialize;
use tera::Context;

use super::{RenderError, Renderer};
use crate::desc::Gpu;
use crate::plan::{NodePlan, Plan};

/// Per-node secrets the caller supplies from the PKI ([`crate::pki::Pki::node_files`] gives
/// a worker no CA private key).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeSecrets {
    /// The node's boot token: the installed system reports `joined` with it.
    pub boot_token: String,
    /// kubeadm bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub bootstrap_token: String,
    /// What is left of the bootstrap token's life, as a Go duration (`"86000s"`).
    pub bootstrap_token_ttl: String,
    /// `sha256:<hex>` of the cluster CA's SubjectPublicKeyInfo.
    pub ca_cert_hash: String,
    /// Files under /etc/kubernetes/pki. Never in the template context.
    #[serde(skip)]
    pub pki_files: Vec<crate::pki::NodeFile>,
}

impl NodeSecrets {
    /// The node's secrets from the cluster PKI, with its boot token.
    pub fn from_pki(pki: &crate::pki::Pki, node: &NodePlan, boot_token: &str) -> NodeSecrets {
        let bt = pki.bootstrap_token();
        NodeSecrets {
            boot_token: boot_token.to_string(),
            bootstrap_token: bt.token.clone(),
            bootstrap_token_ttl: bt.remaining_ttl(crate::store::now_secs()),
            ca_cert_hash: pki.ca_cert_hash(),
            pki_files: pki.node_files(node),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Inline(String),
    /// Downloaded by the node from this URL (Slipway's assets).
    Remote(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    pub path: String,
    pub mode: u32,
    pub contents: Contents,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    /// None: the OS already has the unit (only enabled or given drop-ins).
    pub contents: Option<String>,
    pub dropins: Vec<(String, String)>,
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    pub files: Vec<NodeFile>,
    pub units: Vec<Unit>,
    /// (path, target) symbolic links.
    pub links: Vec<(String, String)>,
    pub ssh_keys: Vec<String>,
}

impl Bundle {
    fn file(&mut self, path: &str, mode: u32, text: String) {
        self.files.push(NodeFile {
            path: path.to_string(),
            mode,
            contents: Contents::Inline(text),
        });
    }

    fn unit(&mut self, name: &str, contents: Option<String>, dropins: Vec<(String, String)>) {
        self.units.push(Unit {
            name: name.to_string(),
            contents,
            dropins,
            enabled: true,
        });
    }
}

/// The context every node template sees: the base context plus secrets and derived values.
fn node_context(plan: &Plan, node: &NodePlan, secrets: &NodeSecrets, report_url: &str) -> Context {
    let mut ctx = super::base_context(plan, node);
    ctx.insert("secrets", secrets);
    ctx.insert("report_url", report_url);
    ctx.insert("assets", &plan.assets);
    ctx.insert("addons", &plan.addons);
    ctx.insert("service_dns_domain", &plan.cluster.service_dns_domain);
    let minor: u32 = plan
        .cluster
        .kubernetes_version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    ctx.insert(
        "kubeadm_api",
        if minor >= 31 { "v1beta4" } else { "v1beta3" },
    );
    let pause = plan
        .images
        .iter()
        .find(|i| i.contains("/pause:"))
        .cloned()
        .unwrap_or_else(|| "registry.k8s.io/pause:3.10".to_string());
    ctx.insert("pause_image", &pause);
    let mut labels: Vec<String> = node
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if node.gpu == Gpu::Nvidia && !node.labels.contains_key("nvidia.com/gpu.present") {
        labels.push("nvidia.com/gpu.present=true".to_string());
    }
    ctx.insert("node_labels", &labels.join(","));
    #[derive(Serialize)]
    struct Taint<'a> {
        key: &'a str,
        value: Option<&'a str>,
        effect: &'a str,
    }
    let taints: Vec<Taint> = node
        .taints
        .iter()
        .filter_map(|t| {
            let (kv, effect) = t.rsplit_once(':')?;
            let (key, value) = match kv.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (kv, None),
            };
            Some(Taint { key, value, effect })
        })
        .collect();
    ctx.insert("taints", &taints);
    // kubeadm checks the pre-issued apiserver certificate against its own names plus
    // certSANs: handing it exactly the certificate's SANs keeps the two from drifting.
    let sans: Vec<String> = crate::pki::apiserver_sans(plan)
        .iter()
        .map(ToString::to_string)
        .collect();
    ctx.insert("api_sans", &sans);
    ctx
}

/// The addon manifests the first control plane applies, by file name.
pub fn manifests(
    r: &Renderer,
    plan: &Plan,
    node: &NodePlan,
) -> Result<Vec<(&'static str, String)>, RenderError> {
    let ctx = node_context(plan, node, &NodeSecrets::default(), "");
    let mut out = vec![("flannel.yaml", r.render(super::MANIFEST_FLANNEL, &ctx)?)];
    if plan.nodes.iter().any(|n| n.gpu == Gpu::Nvidia) {
        out.push((
            "nvidia-runtimeclass.yaml",
            r.render(super::MANIFEST_RUNTIMECLASS, &ctx)?,
        ));
        out.push((
            "nvidia-device-plugin.yaml",
            r.render(super::MANIFEST_DEVICE_PLUGIN, &ctx)?,
        ));
    }
    Ok(out)
}

/// What both systems (PXE live installer and installed OS) start from: the operators' SSH
/// keys, and the node's token with the script that reports progress with it.
fn reporting(
    r: &Renderer,
    plan: &Plan,
    secrets: &NodeSecrets,
    ctx: &Context,
) -> Result<Bundle, RenderError> {
    let mut b = Bundle {
        ssh_keys: plan.os.ssh_authorized_keys.clone(),
        ..Bundle::default()
    };
    b.file(
        "/etc/slipway/token",
        0o600,
        format!("{}\n", secrets.boot_token),
    );
    b.file(
        "/opt/slipway/report.sh",
        0o755,
        r.render(super::NODE_REPORT, ctx)?,
    );
    Ok(b)
}

/// The installed system of `node`: container runtime, Kubernetes binaries and config, its
/// secrets, the join service, and (first control plane) the addons.
pub fn installed_system(
    r: &Renderer,
    plan: &Plan,
    node: &NodePlan,
    secrets: &NodeSecrets,
    report_url: &str,
) -> Result<Bundle, RenderError> {
    use super::*;
    let ctx = node_context(plan, node, secrets, report_url);
    let mut b = reporting(r, plan, secrets, &ctx)?;
    b.file("/etc/hostname", 0o644, format!("{}\n", node.hostname));
    b.file("/opt/slipway/join.sh", 0o755, r.render(NODE_JOIN_SH, &ctx)?);
    b.file(
        "/etc/slipway/kubeadm.yaml",
        0o600,
        r.render(NODE_KUBEADM, &ctx)?,
    );
    b.file(
        "/etc/containerd/config.toml",
        0o644,
        r.render(NODE_CONTAINERD, &ctx)?,
    );
    for up in &plan.registry.upstreams {
        let mut c = ctx.clone();
        c.insert("upstream", up);
        b.file(
            &format!("/etc/containerd/certs.d/{}/hosts.toml", up.name),
            0o644,
            r.render(NODE_HOSTS_TOML, &c)?,
        );
        // hosts.toml names it relative to its own directory, so each certs.d entry is
        // self-contained (containerd resolves `ca` against the host directory).
        if plan.bootstrapper.registry_tls
            && let Some(ca) = secrets.pki_files.iter().find(|f| f.path == "ca.crt")
        {
            b.file(
                &format!("/etc/containerd/certs.d/{}/ca.crt", up.name),
                0o644,
                ca.contents.clone(),
            );
        }
    }
    b.file(
        "/etc/modules-load.d/k8s.conf",
        0o644,
        "overlay\nbr_netfilter\n".into(),
    );
    b.file(
        "/etc/sysctl.d/k8s.conf",
        0o644,
        r.render(NODE_SYSCTL, &ctx)?,
    );
    if !plan.network.ntp.is_empty() {
        b.file(
            "/etc/systemd/timesyncd.conf.d/slipway.conf",
            0o644,
            r.render(NODE_TIMESYNCD, &ctx)?,
        );
    }
    for bin in ["kubeadm", "kubelet", "kubectl"] {
        b.files.push(NodeFile {
            path: format!("/opt/bin/{bin}"),
            mode: 0o755,
            contents: Contents::Remote(format!("{}/{bin}", plan.assets.kubernetes_bin)),
        });
    }
    for f in &secrets.pki_files {
        b.file(
            &format!("/etc/kubernetes/pki/{}", f.path),
            f.mode,
            f.contents.clone(),
        );
    }
    if node.init {
        for (name, text) in manifests(r, plan, node)? {
            b.file(&format!("/etc/slipway/addons/{name}"), 0o644, text);
        }
    }
    b.links.push((
        "/etc/localtime".into(),
        format!("/usr/share/zoneinfo/{}", plan.os.timezone),
    ));
    b.unit(
        "containerd.service",
        None,
        vec![(
            "10-slipway.conf".into(),
            "[Service]\nEnvironment=CONTAINERD_CONFIG=/etc/containerd/config.toml\n".into(),
        )],
    );
    // Before the kubelet: pods on flannel need bridge, host-local, portmap and loopback.
    b.unit(
        "slipway-cni-plugins.service",
        Some(r.render(NODE_CNI_PLUGINS, &ctx)?),
        vec![],
    );
    b.unit(
        "kubelet.service",
        Some(r.render(NODE_KUBELET_UNIT, &ctx)?),
        vec![(
            "10-kubeadm.conf".into(),
            r.render(NODE_KUBELET_DROPIN, &ctx)?,
        )],
    );
    b.unit(
        "slipway-join.service",
        Some(r.render(NODE_JOIN_UNIT, &ctx)?),
        vec![],
    );
    if node.gpu == Gpu::Nvidia {
        if plan.os.profile == OsProfile::Flatcar {
            nvidia_driver_flatcar(&mut b, plan);
        }
        b.unit(
            "slipway-nvidia-toolkit.service",
            Some(r.render(NODE_NVIDIA_TOOLKIT, &ctx)?),
            vec![],
        );
    }
    Ok(b)
}

/// The NVIDIA driver on Flatcar: the release's prebuilt `nvidia-drivers-<branch>` system
/// extension, downloaded from Slipway by Ignition to where Flatcar's initrd looks for an
/// enabled extension (`/etc/flatcar/sysext/flatcar-<name>-<version>.raw`, else it downloads
/// from the internet and fails the boot without), with the `/etc/extensions` link the
/// initrd makes. `nvidia.service`, which would build the driver online, stays disabled.
/// Releases without the extension keep `nvidia.service` (needs internet on first boot).
fn nvidia_driver_flatcar(b: &mut Bundle, plan: &Plan) {
    let Some(url) = &plan.assets.nvidia_drivers_sysext else {
        b.unit("nvidia.service", None, vec![]);
        return;
    };
    let name = format!("nvidia-drivers-{}", plan.os.nvidia_driver);
    let image = format!("/etc/flatcar/sysext/flatcar-{name}-{}.raw", plan.os.version);
    b.file(
        "/etc/flatcar/enabled-sysext.conf",
        0o644,
        format!("{name}\n"),
    );
    b.files.push(NodeFile {
        path: image.clone(),
        mode: 0o644,
        contents: Contents::Remote(url.clone()),
    });
    b.links
        .push((format!("/etc/extensions/flatcar-{name}.raw"), image));
    b.units.push(Unit {
        name: "nvidia.service".into(),
        contents: None,
        dropins: vec![],
        enabled: false,
    });
}

/// The PXE-booted Flatcar live system: installs to disk with the installed system's
/// Ignition (`node_ign`) and reports progress.
pub fn flatcar_installer(
    r: &Renderer,
    plan: &Plan,
    node: &NodePlan,
    secrets: &NodeSecrets,
    report_url: &str,
    node_ign: String,
) -> Result<Bundle, RenderError> {
    use super::*;
    let ctx = node_context(plan, node, secrets, report_url);
    let mut b = reporting(r, plan, secrets, &ctx)?;
    b.file(
        "/opt/slipway/install.sh",
        0o755,
        r.render(FLATCAR_INSTALL_SH, &ctx)?,
    );
    b.file("/opt/slipway/node.ign", 0o600, node_ign);
    b.unit(
        "slipway-install.service",
        Some(r.render(FLATCAR_INSTALL_UNIT, &ctx)?),
        vec![],
    );
    Ok(b)
}
