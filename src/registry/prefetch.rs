//! Warming the cache: when `serve` starts (and is not offline), the images the description
//! lists under `images:` are fetched from their upstreams in the background, so installs
//! do not wait for the internet and keep working if it goes away later. For multi-platform
//! images only the linux/amd64 image is fetched (what the nodes run today); other
//! platforms are fetched when a node asks. Failures are logged; a node's pull retries.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};

use super::path::{Digest, Reference};
use super::{Registry, Source, import, manifest, pull};
use crate::app::App;

/// The platform fetched ahead of time from multi-platform images.
const PLATFORM: (&str, &str) = ("linux", "amd64");

/// Fetches every listed image that is not stored yet; logs each outcome.
pub async fn prefetch(reg: Arc<Registry>, app: Arc<App>) {
    if reg.options.offline {
        return;
    }
    let plan = app.plan();
    for image in &plan.images {
        match prefetch_one(&reg, &plan.registry.upstreams, image).await {
            Ok(0) => tracing::debug!(image, "image already cached"),
            Ok(fetched) => tracing::info!(image, fetched, "image cached ahead of time"),
            Err(e) => tracing::warn!(
                image,
                error = format!("{e:#}"),
                "could not cache image ahead of time"
            ),
        }
    }
}

/// Returns how many manifests and blobs were fetched.
async fn prefetch_one(
    reg: &Arc<Registry>,
    upstreams: &[crate::plan::UpstreamPlan],
    image: &str,
) -> Result<usize> {
    let r = import::parse_ref(image)?;
    let resolved =
        super::resolve(&r.repository, None, upstreams).ok_or_else(|| anyhow!("invalid name"))?;
    let src = resolved
        .upstream
        .ok_or_else(|| anyhow!("its registry is not an upstream"))?;
    let key = resolved.key;
    let reference = match (&r.digest, &r.tag) {
        (Some(d), _) => Reference::Digest(d.clone()),
        (None, Some(t)) => Reference::Tag(t.clone()),
        (None, None) => bail!("no tag or digest"),
    };
    let before = super::Counters::get(&reg.counters.upstream_fetches);
    if !pull::fetch_manifest(reg.clone(), src.clone(), key.clone(), reference.clone()).await? {
        bail!("the upstream does not have it");
    }
    let top = match reference {
        Reference::Digest(d) => d,
        Reference::Tag(t) => reg.storage.tag(&key, &t).context("tag vanished")?,
    };
    let mut todo = vec![top];
    while let Some(d) = todo.pop() {
        let mt = reg
            .storage
            .manifest(&key, &d)
            .context("manifest vanished")?;
        let bytes = reg.storage.read_blob(&d)?;
        let parsed = manifest::parse(&bytes, Some(&mt))?;
        for child in platform_children(&bytes) {
            if !pull::fetch_manifest(
                reg.clone(),
                src.clone(),
                key.clone(),
                Reference::Digest(child.clone()),
            )
            .await?
            {
                bail!("the upstream lacks platform manifest {child}");
            }
            todo.push(child);
        }
        for b in parsed.blobs {
            fetch_blob(reg, &src, b).await?;
        }
    }
    Ok((super::Counters::get(&reg.counters.upstream_fetches) - before) as usize)
}

async fn fetch_blob(reg: &Arc<Registry>, src: &Source, d: Digest) -> Result<()> {
    if reg.storage.blob_size(&d).is_some() {
        return Ok(());
    }
    if !pull::fetch_blob(reg.clone(), src.clone(), d.clone()).await? {
        bail!("the upstream lacks blob {d}");
    }
    Ok(())
}

/// The children of an index that are for `PLATFORM` (none for an image manifest).
fn platform_children(index: &[u8]) -> Vec<Digest> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(index) else {
        return Vec::new();
    };
    let Some(list) = v.get("manifests").and_then(|m| m.as_array()) else {
        return Vec::new();
    };
    list.iter()
        .filter(|m| {
            let p = &m["platform"];
            p["os"] == PLATFORM.0 && p["architecture"] == PLATFORM.1
        })
        .filter_map(|m| m["digest"].as_str().and_then(|d| Digest::parse(d).ok()))
        .collect()
}

/// Whether `image` (a reference as in the description's `images:`) is stored: its tag (or
/// digest) resolves to a manifest here. For the status page.
pub fn is_cached(reg: &Registry, upstreams: &[crate::plan::UpstreamPlan], image: &str) -> bool {
    let Ok(r) = import::parse_ref(image) else {
        return false;
    };
    let Some(resolved) = super::resolve(&r.repository, None, upstreams) else {
        return false;
    };
    let digest = match (&r.digest, &r.tag) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(t)) => reg.storage.tag(&resolved.key, t),
        (None, None) => None,
    };
    digest.is_some_and(|d| reg.storage.manifest(&resolved.key, &d).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_nodes_platform() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let index = format!(
            r#"{{"manifests":[{{"digest":"{a}","platform":{{"os":"linux","architecture":"arm64"}}}},{{"digest":"{b}","platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        assert_eq!(
            platform_children(index.as_bytes()),
            vec![Digest::parse(&b).unwrap()]
        );
        assert!(platform_children(br#"{"layers":[]}"#).is_empty());
        assert!(platform_children(b"not json").is_empty());
    }
}
