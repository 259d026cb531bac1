//! `slipway images import|list|gc`: work on the registry's storage directory directly.
//! `import` and `list` may run while `serve` runs; `gc` needs the storage to itself (it
//! takes the exclusive storage lock and refuses while `serve` or an import holds it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::import;
use super::storage::Storage;
use crate::plan::Plan;

/// The registry's storage: the description's `registry.storage`, else `<state_dir>/registry`.
pub fn storage_dir(plan: &Plan, state_dir: &Path) -> PathBuf {
    match &plan.registry.storage {
        Some(s) => PathBuf::from(s),
        None => state_dir.join("registry"),
    }
}

/// Expands directories holding archives (e.g. `images/oci/`) into their `*.tar` files; an
/// OCI layout directory is one image.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() && !p.join("index.json").is_file() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| import::is_archive(e))
                .collect();
            if found.is_empty() {
                bail!(
                    "{}: no image archives (*.tar) or OCI layouts in it",
                    p.display()
                );
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Imports every path; prints one line per stored name. A progress bar per archive goes to
/// stderr (hidden when stderr is not a terminal).
pub fn import(dir: &Path, paths: &[PathBuf], name: Option<&str>) -> Result<String> {
    let storage = Storage::open(dir)
        .with_context(|| format!("opening the registry storage {}", dir.display()))?;
    let _lock = storage
        .lock(false)
        .context("the registry storage is locked by `slipway images gc`")?;
    let paths = expand(paths)?;
    if name.is_some() && paths.len() != 1 {
        bail!("--name applies to a single archive");
    }
    let mut out = String::new();
    for p in &paths {
        let bar = indicatif::ProgressBar::new(0).with_message(p.display().to_string());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let imported = import::import(&storage, p, name, &bar)
            .with_context(|| format!("importing {}", p.display()));
        bar.finish_and_clear();
        for i in imported? {
            let _ = writeln!(out, "imported {i}");
        }
    }
    Ok(out)
}

/// `REPOSITORY TAG DIGEST`, one line per tag; untagged manifests are not listed.
pub fn list(dir: &Path) -> Result<String> {
    let storage = Storage::open(dir)
        .with_context(|| format!("opening the registry storage {}", dir.display()))?;
    let mut rows = vec![(
        "REPOSITORY".to_string(),
        "TAG".to_string(),
        "DIGEST".to_string(),
    )];
    for repo in storage.repositories()? {
        for tag in storage.tags(&repo).unwrap_or_default() {
            let d = storage
                .tag(&repo, &tag)
                .map(|d| d.to_string())
                .unwrap_or_default();
            rows.push((repo.clone(), tag, d));
        }
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (r, t, d) in rows {
        let _ = writeln!(out, "{r:w0$}  {t:w1$}  {d}");
    }
    Ok(out)
}

/// Removes unreferenced blobs. Refuses while `serve` or an import holds the storage.
pub fn gc(dir: &Path, dry_run: bool) -> Result<String> {
    let storage = Storage::open(dir)
        .with_context(|| format!("opening the registry storage {}", dir.display()))?;
    let _lock = storage
        .lock(true)
        .context("the registry storage is in use (stop `slipway serve` and imports first)")?;
    let r = storage.gc(dry_run)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    Ok(format!(
        "{verb} {} blobs ({} bytes), kept {}, removed {} unfinished uploads\n",
        r.removed, r.bytes, r.kept, r.temp_files
    ))
}
