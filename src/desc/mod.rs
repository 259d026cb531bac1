//! The cluster description (`cluster-desc.yaml`): parsing with positions, typed reading with
//! documented defaults, and validation that reports every problem at once.

mod build;
pub mod diag;
pub mod model;
pub mod read;
pub mod types;
mod validate;
pub mod yaml;

use std::path::{Path, PathBuf};

pub use build::{DEFAULT_UPSTREAMS, default_upstream_url, nth_host, parse_taint};
pub use diag::{Diagnostic, Diagnostics};
pub use model::*;
pub use types::{Mac, Pos};
pub use validate::image_registry;

/// Largest description accepted; a real one is a few hundred KiB at 1000+ nodes.
const MAX_DESC_BYTES: u64 = 16 << 20;

/// Reads and validates a description file. `Err` carries every problem found.
pub fn load(path: &Path) -> Result<ClusterDesc, Diagnostics> {
    let name = path.display().to_string();
    let fail = |msg: String| {
        let mut d = Diagnostics::new(name.clone(), "");
        d.error(Pos::default(), msg);
        d
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read {name}: {e}")))?;
    if meta.len() > MAX_DESC_BYTES {
        return Err(fail(format!(
            "{name} is larger than {MAX_DESC_BYTES} bytes"
        )));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read {name}: {e}")))?;
    parse_str(&name, &text)
}

/// Parses and validates description text; `file` names it in diagnostics.
pub fn parse_str(file: &str, text: &str) -> Result<ClusterDesc, Diagnostics> {
    let mut cx = read::Cx {
        src: text,
        diags: Diagnostics::new(file, text),
    };
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            cx.diags
                .error(e.pos, format!("YAML syntax error: {}", e.message));
            return Err(cx.diags);
        }
    };
    if !matches!(root.value, yaml::Value::Map(_)) {
        cx.diags.error(
            root.pos,
            format!(
                "expected a mapping at the top level, found {}",
                root.value.kind()
            ),
        );
        return Err(cx.diags);
    }
    let desc = build::build(&root, &mut cx);
    if let Some(desc) = &desc {
        validate::validate(desc, nodes_key_pos(&root), &mut cx.diags);
    }
    let mut diags = cx.diags;
    diags.sort();
    match desc {
        Some(d) if diags.is_empty() => Ok(d),
        _ => {
            if diags.is_empty() {
                diags.error(root.pos, "the description is incomplete");
            }
            Err(diags)
        }
    }
}

fn nodes_key_pos(root: &yaml::Node) -> Pos {
    match &root.value {
        yaml::Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == "nodes")
            .map(|(k, _)| k.pos)
            .unwrap_or_default(),
        _ => Pos::default(),
    }
}

/// The `-c/--config` argument every command that reads the description takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The cluster description.
    #[arg(
        short = 'c',
        long = "config",
        default_value = "cluster-desc.yaml",
        env = "SLIPWAY_CONFIG"
    )]
    pub path: PathBuf,
}

impl std::ops::Deref for ConfigArg {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.path
    }
}
