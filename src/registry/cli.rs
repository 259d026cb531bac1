//! `slipway images import|list|gc`: work on the registry's storage directory directly.
//! `import` and `list` may run while `serve` runs; `gc` needs the storage to itself (it
//! takes the exclusive storage lock and refuses while `serve` or an import holds it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::import;
use super::storage::Storage;
use crate::plan::Plan;

#[derive(clap::Subcommand)]
pub enum ImagesCommand {
    /// Load OCI archives, OCI layouts or docker-archive tarballs (a directory: its *.tar)
    /// under their recorded names. Safe while `serve` runs.
    Import {
        #[command(flatten)]
        at: StorageArgs,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Store the (single) image under this reference instead, e.g. registry.k8s.io/pause:3.10.
        #[arg(long)]
        name: Option<String>,
    },
    /// Repositories, tags and digests stored.
    List {
        #[command(flatten)]
        at: StorageArgs,
    },
    /// Remove blobs no manifest references. Stop `serve` first (it refuses otherwise).
    Gc {
        #[command(flatten)]
        at: StorageArgs,
        /// Report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Where the registry's storage is: --storage, else the description's registry.storage,
/// else <state-dir>/registry.
#[derive(clap::Args)]
pub struct StorageArgs {
    #[command(flatten)]
    config: crate::desc::ConfigArg,
    #[arg(long, default_value = "/var/lib/slipway", env = "SLIPWAY_STATE_DIR")]
    state_dir: PathBuf,
    /// The registry storage directory itself (the description is then not read).
    #[arg(long)]
    storage: Option<PathBuf>,
}

impl StorageArgs {
    fn dir(&self) -> Result<PathBuf> {
        match &self.storage {
            Some(s) => Ok(s.clone()),
            None => match crate::desc::load(&self.config) {
                Ok(d) => Ok(storage_dir(&Plan::from_desc(&d), &self.state_dir)),
                Err(diags) => {
                    eprint!("{diags}");
                    bail!("{} is invalid", self.config.display())
                }
            },
        }
    }
}

/// `slipway images ...`: prints the result, or `error: ...` with exit status 1.
pub fn run(command: ImagesCommand) -> ExitCode {
    let result = match &command {
        ImagesCommand::Import { at, paths, name } => at
            .dir()
            .and_then(|dir| import(&dir, paths, name.as_deref())),
        ImagesCommand::List { at } => at.dir().and_then(|dir| list(&dir)),
        ImagesCommand::Gc { at, dry_run } => at.dir().and_then(|dir| gc(&dir, *dry_run)),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

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
    if !dir.is_dir() {
        bail!("no registry storage at {}", dir.display());
    }
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
