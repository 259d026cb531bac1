//! `slipway images import`: loads image archives into the registry's storage, for sites
//! without internet access. Accepted: OCI archives (`skopeo copy ... oci-archive:f.tar:ref`),
//! OCI layout directories, and docker-archive tarballs (`docker save`, old and new format).
//! Images keep their original names (`org.opencontainers.image.ref.name` or containerd's
//! `io.containerd.image.name` annotation, docker's `RepoTags`), stored as the registry
//! stores pull-through content: `registry.k8s.io/pause:3.10` is what nodes later pull
//! through the mirror, `busybox:1.36` becomes `docker.io/library/busybox`.
//!
//! The import is safe while `serve` runs: blobs are verified and renamed into place, links
//! and tags are atomic files, its temporary files (`imp-*`) are its own (serve cleans only
//! its own at start), and the storage lock (held shared by both) only keeps `gc` out.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use super::manifest;
use super::path::{self, Digest};
use super::storage::Storage;

/// One image name an import stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Digest,
}

impl std::fmt::Display for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{t} ({})", self.repository, self.digest),
            None => write!(f, "{}@{}", self.repository, self.digest),
        }
    }
}

/// An image reference split into stored repository, tag and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Parses `[host/]path[:tag][@digest]`; a name without a registry host is docker.io's.
pub fn parse_ref(s: &str) -> Result<ImageRef> {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| anyhow!("{s}: {e}"))?)),
        None => (s, None),
    };
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_string())),
        None => (rest, None),
    };
    let (host, path) = match name.split_once('/') {
        Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (h, p),
        _ => ("docker.io", name),
    };
    let resolved =
        super::resolve(path, Some(host), &[]).ok_or_else(|| anyhow!("{s}: invalid image name"))?;
    if let Some(t) = &tag
        && !path::valid_tag(t)
    {
        bail!("{s}: invalid tag");
    }
    let tag = if tag.is_none() && digest.is_none() {
        Some("latest".to_string())
    } else {
        tag
    };
    Ok(ImageRef {
        repository: resolved.key,
        tag,
        digest,
    })
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// What a pass over an archive found: the descriptor files and every stored file.
#[derive(Default)]
struct Scan {
    index: Option<Vec<u8>>,
    docker: Option<Vec<u8>>,
    /// Archive path -> stored blob (docker-archive names its files freely).
    files: HashMap<String, (Digest, u64)>,
    links: HashMap<String, String>,
}

fn clean(p: &str) -> String {
    p.trim_start_matches("./").to_string()
}

/// Stores one archive entry; checks `blobs/sha256/<hex>` entries against their names.
fn store_entry(storage: &Storage, scan: &mut Scan, name: &str, r: &mut dyn Read) -> Result<()> {
    match name {
        "index.json" | "manifest.json" => {
            let mut buf = Vec::new();
            r.take(64 << 20).read_to_end(&mut buf)?;
            let slot = if name == "index.json" {
                &mut scan.index
            } else {
                &mut scan.docker
            };
            *slot = Some(buf.clone());
            let d = storage.put_blob_reader(&mut &buf[..], None, "imp")?.0;
            scan.files.insert(name.to_string(), (d, buf.len() as u64));
        }
        "oci-layout" | "repositories" => {}
        _ => {
            let expected = name
                .strip_prefix("blobs/")
                .map(|rest| Digest::parse(&rest.replacen('/', ":", 1)))
                .transpose()
                .map_err(|_| anyhow!("{name}: not a sha256 blob name"))?;
            let (d, n) = storage
                .put_blob_reader(r, expected.as_ref(), "imp")
                .with_context(|| format!("storing {name}"))?;
            scan.files.insert(name.to_string(), (d, n));
        }
    }
    Ok(())
}

fn scan_tar(storage: &Storage, r: impl Read) -> Result<Scan> {
    let mut scan = Scan::default();
    let mut archive = tar::Archive::new(r);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = clean(&entry.path()?.to_string_lossy());
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Some(target) = entry.link_name()? {
                let target = target.to_string_lossy().into_owned();
                // docker save links duplicate layers: "<id>/layer.tar -> ../<id2>/layer.tar".
                let base = Path::new(&name).parent().unwrap_or(Path::new(""));
                let resolved = if kind.is_symlink() {
                    normalize(&base.join(&target))
                } else {
                    clean(&target)
                };
                scan.links.insert(name, resolved);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        store_entry(storage, &mut scan, &name, &mut entry)?;
    }
    Ok(scan)
}

fn normalize(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    out.join("/")
}

fn scan_dir(storage: &Storage, dir: &Path, progress: &indicatif::ProgressBar) -> Result<Scan> {
    let mut scan = Scan::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                stack.push(rel);
            } else if e.file_type()?.is_file() {
                let mut f = progress.wrap_read(File::open(e.path())?);
                store_entry(storage, &mut scan, &rel.to_string_lossy(), &mut f)?;
            }
        }
    }
    Ok(scan)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += dir_size(&e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

/// Imports one archive or layout; `name` overrides the recorded name (one image only).
pub fn import(
    storage: &Storage,
    src: &Path,
    name: Option<&str>,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Imported>> {
    let scan = if src.is_dir() {
        progress.set_length(dir_size(src));
        scan_dir(storage, src, progress)?
    } else {
        let f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        progress.set_length(f.metadata()?.len());
        let mut magic = [0u8; 2];
        File::open(src)?.read_exact(&mut magic).ok();
        if magic == [0x1f, 0x8b] {
            bail!(
                "{} is gzip-compressed; decompress it first (gunzip)",
                src.display()
            );
        }
        scan_tar(storage, progress.wrap_read(f))?
    };
    let override_ref = name.map(parse_ref).transpose()?;
    if let Some(index) = &scan.index {
        return link_oci(storage, index, override_ref.as_ref());
    }
    if let Some(docker) = &scan.docker {
        return link_docker(storage, &scan, docker, override_ref.as_ref());
    }
    bail!(
        "{}: neither an OCI layout/archive (index.json) nor a docker archive (manifest.json)",
        src.display()
    )
}

fn link_oci(storage: &Storage, index: &[u8], over: Option<&ImageRef>) -> Result<Vec<Imported>> {
    let index: OciIndex = serde_json::from_slice(index).context("index.json")?;
    if over.is_some() && index.manifests.len() != 1 {
        bail!(
            "--name needs an archive with one image; this one has {}",
            index.manifests.len()
        );
    }
    let mut out = Vec::new();
    for m in &index.manifests {
        let d = Digest::parse(&m.digest)
            .map_err(|_| anyhow!("index.json: invalid digest {}", m.digest))?;
        let r = match over {
            Some(r) => r.clone(),
            None => {
                let recorded = m
                    .annotations
                    .get("io.containerd.image.name")
                    .or_else(|| m.annotations.get("org.opencontainers.image.ref.name"))
                    .filter(|n| n.contains('/') || n.contains(':'))
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: no image name recorded in the archive; give one with --name",
                            m.digest
                        )
                    })?;
                parse_ref(recorded)?
            }
        };
        link_tree(storage, &r.repository, &d, Some(&m.media_type))?;
        if let Some(t) = &r.tag {
            storage.set_tag(&r.repository, t, &d)?;
        }
        out.push(Imported {
            repository: r.repository.clone(),
            tag: r.tag.clone(),
            digest: d,
        });
    }
    Ok(out)
}

/// Links manifest `d` (and an index's children) into `repo`, checking blobs are present.
fn link_tree(storage: &Storage, repo: &str, d: &Digest, media_type: Option<&str>) -> Result<()> {
    let bytes = storage
        .read_blob(d)
        .map_err(|_| anyhow!("manifest {d} is not in the archive"))?;
    let p = manifest::parse(&bytes, media_type.filter(|m| !m.is_empty()))
        .map_err(|e| anyhow!("manifest {d}: {e}"))?;
    for b in &p.blobs {
        if storage.blob_size(b).is_none() {
            bail!("manifest {d} references {b}, which is not in the archive");
        }
    }
    for (child, mt) in &p.manifests {
        if storage.blob_size(child).is_some() {
            link_tree(storage, repo, child, Some(mt))?;
        } else {
            // `skopeo copy` without --all keeps an index but one platform's image.
            tracing::warn!(%child, "platform manifest not in the archive; pulls of that platform will fail");
        }
    }
    storage.link_manifest(repo, d, p.media_type)?;
    Ok(())
}

fn link_docker(
    storage: &Storage,
    scan: &Scan,
    json: &[u8],
    over: Option<&ImageRef>,
) -> Result<Vec<Imported>> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(json).context("manifest.json")?;
    let file = |p: &str| -> Result<(Digest, u64)> {
        let p = clean(p);
        let p = scan.links.get(&p).cloned().unwrap_or(p);
        scan.files
            .get(&p)
            .cloned()
            .ok_or_else(|| anyhow!("{p} is missing from the archive"))
    };
    let mut out = Vec::new();
    for e in &entries {
        let (cfg, cfg_size) = file(&e.config)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let (d, size) = file(l)?;
            let mut magic = [0u8; 2];
            File::open(storage.blob_path(&d))?
                .read_exact(&mut magic)
                .ok();
            let mt = if magic == [0x1f, 0x8b] {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else {
                "application/vnd.docker.image.rootfs.diff.tar"
            };
            layers.push(serde_json::json!({"mediaType": mt, "size": size, "digest": d.as_str()}));
        }
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": cfg_size, "digest": cfg.as_str()},
            "layers": layers,
        });
        let bytes = serde_json::to_vec_pretty(&m)?;
        let d = storage.put_blob_reader(&mut &bytes[..], None, "imp")?.0;
        let refs: Vec<ImageRef> = match over {
            Some(r) => vec![r.clone()],
            None => e
                .repo_tags
                .iter()
                .flatten()
                .map(|t| parse_ref(t))
                .collect::<Result<_>>()?,
        };
        if refs.is_empty() {
            bail!("an image in manifest.json has no RepoTags; give a name with --name");
        }
        for r in refs {
            storage.link_manifest(&r.repository, &d, manifest::DOCKER_MANIFEST)?;
            if let Some(t) = &r.tag {
                storage.set_tag(&r.repository, t, &d)?;
            }
            out.push(Imported {
                repository: r.repository,
                tag: r.tag,
                digest: d.clone(),
            });
        }
    }
    Ok(out)
}

/// Whether a path looks like something `import` takes (for directory arguments).
pub fn is_archive(p: &Path) -> bool {
    p.is_dir() && p.join("index.json").is_file() || p.extension().is_some_and(|e| e == "tar")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse_ref("registry.k8s.io/pause:3.10").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("registry.k8s.io/pause", Some("3.10"))
        );
        let r = parse_ref("busybox:1.36").unwrap();
        assert_eq!(r.repository, "docker.io/library/busybox");
        let r = parse_ref("docker.io/flannel/flannel").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("docker.io/flannel/flannel", Some("latest"))
        );
        let r = parse_ref("localhost:5000/a/b:v1").unwrap();
        assert_eq!(r.repository, "localhost_5000/a/b");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_ref(&format!("ghcr.io/x/y@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.unwrap().to_string()), (None, d));
        assert!(parse_ref("UPPER/case").is_err());
        assert!(parse_ref("a:-bad").is_err());
        assert!(parse_ref("../../etc/passwd").is_err());
    }
}
