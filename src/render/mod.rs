//! Templates -> what machines are served: iPXE scripts and per-node configs. The built-in
//! templates live in `templates/` and are compiled in; `--templates DIR` overrides any of
//! them by the same relative name. A broken override fails at start (or keeps the previous
//! templates on reload) instead of at a machine's boot.

use std::path::Path;

use serde::Serialize;
use tera::{Context, Tera};

use crate::desc::OsProfile;
use crate::plan::{NodePlan, Plan};

pub const IPXE_INSTALL: &str = "ipxe/install.ipxe";
pub const IPXE_LOCAL_DISK: &str = "ipxe/local-disk.ipxe";
pub const IPXE_HOLD: &str = "ipxe/hold.ipxe";
pub const FLATCAR_IGNITION: &str = "flatcar/ignition.json";
pub const UBUNTU_USER_DATA: &str = "ubuntu/user-data";

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
        FLATCAR_IGNITION,
        include_str!("../../templates/flatcar/ignition.json"),
    ),
    (
        UBUNTU_USER_DATA,
        include_str!("../../templates/ubuntu/user-data"),
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

    /// The node's OS configuration and its media type.
    pub fn node_config(
        &self,
        plan: &Plan,
        node: &NodePlan,
    ) -> Result<(String, &'static str), RenderError> {
        let mut ctx = base_context(plan, node);
        match plan.os.profile {
            OsProfile::Flatcar => {
                ctx.insert(
                    "hostname_data_url",
                    &format!("data:,{}", percent_encode(&node.hostname)),
                );
                let text = self.render(FLATCAR_IGNITION, &ctx)?;
                Ok((text, "application/vnd.coreos.ignition+json"))
            }
            OsProfile::Ubuntu => Ok((
                self.render(UBUNTU_USER_DATA, &ctx)?,
                "text/cloud-config; charset=utf-8",
            )),
        }
    }
}

/// What every template sees: `node`, `cluster`, `os`, `network`, `bootstrapper`, the HTTP
/// base and the node's script URL.
fn base_context(plan: &Plan, node: &NodePlan) -> Context {
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

/// RFC 3986 percent-encoding of everything but unreserved characters (for data: URLs).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
