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

/// The cluster PKI in the state directory. An existing one is only read (a running
/// `serve` owns it; re-issuing here would change key material behind its back); stale
/// leaves are shown as they are, with a warning. A missing one is created as `serve`
/// would, its `secret.issued` events recorded in the store.
fn load_pki(plan: &Plan, state_dir: &Path) -> Result<crate::pki::Pki> {
    use crate::pki::Pki;
    if Pki::exists(state_dir) {
        let pki = Pki::load_read_only(state_dir, plan).context("reading the cluster PKI")?;
        for (name, reason) in pki.pending() {
            eprintln!(
                "warning: {name} {} and is shown as it is on disk; `slipway serve` re-issues it",
                reason.describe()
            );
        }
        return Ok(pki);
    }
    let store = crate::store::open(state_dir)
        .with_context(|| format!("opening the state store in {}", state_dir.display()))?;
    let pki = Pki::load_or_init(state_dir, plan, None).context("creating the cluster PKI")?;
    crate::pki::record_issued(&store, pki.issued()).context("recording secret.issued events")?;
    Ok(pki)
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
    let pki = load_pki(plan, state_dir)?;
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
