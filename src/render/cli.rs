//! `slipway render`: prints what a node gets, secrets redacted unless asked for.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{NodeSecrets, Renderer, bundle, ignition};
use crate::desc::OsProfile;
use crate::plan::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// The iPXE install script.
    Ipxe,
    /// Flatcar: the live installer's Ignition (it carries the installed system's).
    Ignition,
    /// Flatcar: the installed system's Ignition on its own.
    NodeIgnition,
    /// Ubuntu: the cloud-config.
    CloudConfig,
    /// The addon manifests the first control plane applies (YAML stream).
    Manifests,
}

/// Placeholder for every secret value in redacted output.
pub const REDACTED: &str = "REDACTED";

/// The node's secrets with every value replaced, keeping which files it gets and their modes.
fn redacted(secrets: NodeSecrets) -> NodeSecrets {
    NodeSecrets {
        boot_token: REDACTED.into(),
        bootstrap_token: format!("{REDACTED}.{REDACTED}"),
        bootstrap_token_ttl: "86400s".into(),
        ca_cert_hash: format!("sha256:{REDACTED}"),
        pki_files: secrets
            .pki_files
            .into_iter()
            .map(|mut f| {
                f.contents = format!("{REDACTED}: {}\n", f.path);
                f
            })
            .collect(),
    }
}

pub fn render(
    plan: &Plan,
    state_dir: &Path,
    templates: Option<&Path>,
    node_name: &str,
    what: What,
    show_secrets: bool,
) -> Result<String> {
    let node = plan
        .node_by_name(node_name)
        .with_context(|| format!("no node `{node_name}` in the description"))?;
    let r = Renderer::new(templates)?;
    let profile = plan.os.profile;
    match (what, profile) {
        (What::Ignition | What::NodeIgnition, OsProfile::Ubuntu) => {
            bail!("os.profile is ubuntu: use --what cloud-config")
        }
        (What::CloudConfig, OsProfile::Flatcar) => {
            bail!("os.profile is flatcar: use --what ignition or node-ignition")
        }
        _ => {}
    }
    if what == What::Ipxe {
        let args = crate::boot::install_kernel_args(plan, node, REDACTED);
        return Ok(r.install_script(plan, node, &args)?);
    }
    if what == What::Manifests {
        let docs = bundle::manifests(&r, plan, node)?;
        return Ok(docs
            .into_iter()
            .map(|(_, text)| text)
            .collect::<Vec<_>>()
            .join("\n---\n"));
    }
    // Secrets come from the cluster PKI in the state directory (created there if missing,
    // exactly as `serve` would).
    let pki = crate::pki::Pki::load_or_init(state_dir, plan, crate::pki::KeyAlgorithm::EcdsaP256)
        .context("loading the cluster PKI")?;
    let secrets = NodeSecrets::from_pki(&pki, node, REDACTED);
    let secrets = if show_secrets {
        secrets
    } else {
        redacted(secrets)
    };
    let report = crate::boot::report_url(plan, node);
    Ok(match what {
        What::NodeIgnition => {
            let system = bundle::installed_system(&r, plan, node, &secrets, &report)?;
            serde_json::to_string_pretty(&ignition::to_ignition(&system))?
        }
        _ => r.node_config(plan, node, &secrets)?.0,
    })
}
