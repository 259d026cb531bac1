//! `slipway pki show|renew`: thin wrappers so main.rs only parses arguments.

use std::path::Path;

use anyhow::Context;

use super::{KeyAlgorithm, Pki, record_issued, show, summary_table};
use crate::plan::Plan;

/// The certificate table of what exists under `state_dir` (nothing is generated).
pub fn show_table(plan: &Plan, state_dir: &Path) -> anyhow::Result<String> {
    Ok(summary_table(&show(state_dir, plan)?))
}

/// Re-issues every leaf certificate (generating whatever is missing, CAs included, on a
/// fresh state directory) with `alg`, else the PKI's own algorithm, records a
/// `secret.issued` event for each, and returns one line per issued secret. The store is
/// opened first: while `slipway serve` holds it this fails before anything is written.
pub fn renew(plan: &Plan, state_dir: &Path, alg: Option<KeyAlgorithm>) -> anyhow::Result<String> {
    let store = crate::store::open(state_dir)
        .with_context(|| format!("opening the state store in {}", state_dir.display()))?;
    let pki = Pki::load_and_renew(state_dir, plan, alg)?;
    record_issued(&store, pki.issued()).context("recording secret.issued events")?;
    Ok(pki
        .issued()
        .iter()
        .map(|i| i.event_message() + "\n")
        .collect())
}
