//! Templates -> what machines are served: iPXE scripts and per-node configs. The built-in
//! templates live in `templates/` and are compiled in; `--templates DIR` overrides any of
//! them by the same relative name. A broken override fails at start (or keeps the previous
//! templates on reload) instead of at a machine's boot.

use std::path::Path;

use serde::Serialize;
use tera::{Context, Tera};

use crate::desc::OsProfile;
use crate::plan::{NodePlan, Plan};

pub mod bundle;
pub mod cli;
pub mod cloud;
pub mod ignition;

pub use bundle::NodeSecrets;

pub const IPXE_INSTALL: &str = "ipxe/install.ipxe";
pub const IPXE_LOCAL_DISK: &str = "ipxe/local-disk.ipxe";
pub const IPXE_HOLD: &str = "ipxe/hold.ipxe";
pub const FLATCAR_INSTALL_SH: &str = "flatcar/install.sh";
pub const FLATCAR_INSTALL_UNIT: &str = "flatcar/slipway-install.service";
pub const NODE_CONTAINERD: &str = "node/containerd-config.toml";
pub const NODE_HOSTS_TOML: &str = "node/hosts.toml";
pub const NODE_KUBELET_UNIT: &str = "node/kubelet.service";
pub const NODE_KUBELET_DROPIN: &str = "node/10-kubeadm.conf";
pub const NODE_KUBEADM: &str = "node/kubeadm.yaml";
pub const NODE_JOIN_SH: &str = "node/slipway-join.sh";
pub const NODE_JOIN_UNIT: &str = "node/slipway-join.service";
pub const NODE_REPORT: &str = "node/report.sh";
pub const NODE_SYSCTL: &str = "node/k8s-sysctl.conf";
pub const NODE_TIMESYNCD: &str = "node/timesyncd.conf";
pub const NODE_NVIDIA_TOOLKIT: &str = "node/nvidia-toolkit.service";
pub const NODE_CNI_PLUGINS: &str = "node/cni-plugins.service";
pub const MANIFEST_FLANNEL: &str = "manifests/flannel.yaml";
pub const MANIFEST_RUNTIMECLASS: &str = "manifests/nvidia-runtimeclass.yaml";
pub const MANIFEST_DEVICE_PLUGIN: &str = "manifests/nvidia-device-plugin.yaml";

/// Every built-in template by name; `--templates DIR` may replace any of them.
const BUILTIN: &[(&str, &str)] = &[
    (
        IPXE_INSTALL,
        include_str!("../../templates/ipxe/install.ipxe"),
    ),
    (
        IPXE_LOCAL_DISK,
        include_str!("../../templates/ipxe/local-disk.ipxe"),
    ),
    (IPXE_HOLD, include_str!("../../templates/ipxe/hold.ipxe")),
    (
        FLATCAR_INSTALL_SH,
        include_str!("../../templates/flatcar/install.sh"),
    ),
    (
        FLATCAR_INSTALL_UNIT,
        include_str!("../../templates/flatcar/slipway-install.service"),
    ),
    (
        NODE_CONTAINERD,
        include_str!("../../templates/node/containerd-config.toml"),
    ),
    (
        NODE_HOSTS_TOML,
        include_str!("../../templates/node/hosts.toml"),
    ),
    (
        NODE_KUBELET_UNIT,
        include_str!("../../templates/node/kubelet.service"),
    ),
    (
        NODE_KUBELET_DROPIN,
        include_str!("../../templates/node/10-kubeadm.conf"),
    ),
    (
        NODE_KUBEADM,
        include_str!("../../templates/node/kubeadm.yaml"),
    ),
    (
        NODE_JOIN_SH,
        include_str!("../../templates/node/slipway-join.sh"),
    ),
    (
        NODE_JOIN_UNIT,
        include_str!("../../templates/node/slipway-join.service"),
    ),
    (NODE_REPORT, include_str!("../../templates/node/report.sh")),
    (
        NODE_SYSCTL,
        include_str!("../../templates/node/k8s-sysctl.conf"),
    ),
    (
        NODE_TIMESYNCD,
        include_str!("../../templates/node/timesyncd.conf"),
    ),
    (
        NODE_NVIDIA_TOOLKIT,
        include_str!("../../templates/node/nvidia-toolkit.service"),
    ),
    (
        NODE_CNI_PLUGINS,
        include_str!("../../templates/node/cni-plugins.service"),
    ),
    (
        MANIFEST_FLANNEL,
        include_str!("../../templates/manifests/flannel.yaml"),
    ),
    (
        MANIFEST_RUNTIMECLASS,
        include_str!("../../templates/manifests/nvidia-runtimeclass.yaml"),
    ),
    (
        MANIFEST_DEVICE_PLUGIN,
        include_str!("../../templates/manifests/nvidia-device-plugin.yaml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
    #[error("reading template override {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn template_error(name: &str, e: tera::Error) -> RenderError {
    // Tera keeps the useful part (line, unknown variable) in the source chain.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    RenderError::Template {
        name: name.to_string(),
        message,
    }
}

pub struct Renderer {
    tera: Tera,
}

impl Renderer {
    /// The built-in templates, each replaced by `overrides/<name>` where that file exists.
    pub fn new(overrides: Option<&Path>) -> Result<Renderer, RenderError> {
        let mut sources = Vec::with_capacity(BUILTIN.len());
        for &(name, builtin) in BUILTIN {
            let text = match overrides.map(|d| d.join(name)).filter(|p| p.is_file()) {
                Some(path) => std::fs::read_to_string(&path).map_err(|source| RenderError::Io {
                    path: path.display().to_string(),
                    source,
                })?,
                None => builtin.to_string(),
            };
            sources.push((name, text));
        }
        let mut tera = Tera::default();
        tera.autoescape_on(Vec::new());
        for (name, text) in &sources {
            tera.add_raw_template(name, text)
                .map_err(|e| template_error(name, e))?;
        }
        Ok(Renderer { tera })
    }

    pub fn render(&self, name: &str, ctx: &Context) -> Result<String, RenderError> {
        self.tera
            .render(name, ctx)
            .map_err(|e| template_error(name, e))
    }

    /// The install script: kernel and initrd with the node's kernel arguments.
    pub fn install_script(
        &self,
        plan: &Plan,
        node: &NodePlan,
        kernel_args: &[String],
    ) -> Result<String, RenderError> {
        let mut ctx = base_context(plan, node);
        ctx.insert("kernel_url", &node.boot.kernel);
        ctx.insert("initrd_url", &node.boot.initrd);
        ctx.insert("kernel_args", &kernel_args.join(" "));
        self.render(IPXE_INSTALL, &ctx)
    }

    pub fn local_disk_script(&self, plan: &Plan, node: &NodePlan) -> Result<String, RenderError> {
        self.render(IPXE_LOCAL_DISK, &base_context(plan, node))
    }

    /// A script that waits and asks again (machines Slipway has nothing for yet).
    pub fn hold_script(
        &self,
        script_url: &str,
        message: &str,
        retry_secs: u32,
    ) -> Result<String, RenderError> {
        let mut ctx = Context::new();
        ctx.insert("script_url", script_url);
        ctx.insert("message", message);
        ctx.insert("retry_secs", &retry_secs);
        self.render(IPXE_HOLD, &ctx)
    }

    /// What the node fetches with its token, and its media type: Flatcar gets the live
    /// installer's Ignition (which carries the installed system's), Ubuntu a cloud-config.
    pub fn node_config(
        &self,
        plan: &Plan,
        node: &NodePlan,
        secrets: &NodeSecrets,
    ) -> Result<(String, &'static str), RenderError> {
        let report = crate::boot::report_url(plan, node);
        let system = bundle::installed_system(self, plan, node, secrets, &report)?;
        match plan.os.profile {
            OsProfile::Flatcar => {
                let node_ign = ignition::to_ignition(&system).to_string();
                let live = bundle::flatcar_installer(self, plan, node, secrets, &report, node_ign)?;
                Ok((
                    serde_json::to_string_pretty(&ignition::to_ignition(&live))
                        .expect("JSON values serialize"),
                    "application/vnd.coreos.ignition+json",
                ))
            }
            OsProfile::Ubuntu => Ok((
                cloud::autoinstall(plan, node, &system, &secrets.boot_token, &report),
                "text/cloud-config; charset=utf-8",
            )),
        }
    }
}

/// What every template sees: `node`, `cluster`, `os`, `network`, `bootstrapper`, the HTTP
/// base and the node's script URL.
pub(crate) fn base_context(plan: &Plan, node: &NodePlan) -> Context {
    #[derive(Serialize)]
    struct Ctx<'a> {
        node: &'a NodePlan,
        cluster: &'a crate::plan::ClusterPlan,
        os: &'a crate::plan::OsPlan,
        network: &'a crate::plan::NetworkPlan,
        bootstrapper: &'a crate::plan::BootstrapperPlan,
        http_base: &'a str,
        script_url: &'a str,
    }
    Context::from_serialize(Ctx {
        node,
        cluster: &plan.cluster,
        os: &plan.os,
        network: &plan.network,
        bootstrapper: &plan.bootstrapper,
        http_base: &plan.bootstrapper.http_base,
        script_url: &node.boot.ipxe_script,
    })
    .expect("plan types serialize to a JSON object")
}

#[cfg(test)]
mod tests;
