//! The few fields of image manifests and indexes the registry needs: the media type and the
//! digests a manifest references (to check a push is complete, to link an index's children,
//! and to mark blobs in use for garbage collection). OCI and Docker schema 2 share the
//! layout, so one lenient reader serves both; schema 1 is refused.

use serde::Deserialize;

use super::path::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest type served; also the `Accept` header sent to upstreams.
pub const MEDIA_TYPES: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
}

/// What a manifest says about itself and what it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub media_type: &'static str,
    /// Config and layers (image manifests).
    pub blobs: Vec<Digest>,
    /// Child manifests with their media types (indexes).
    pub manifests: Vec<(Digest, String)>,
    /// The manifest this one refers to (OCI 1.1 referrers), if any.
    pub subject: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("unsupported manifest media type {0}")]
    MediaType(String),
    #[error("schema 1 manifests are not supported")]
    Schema1,
    #[error("invalid digest {0} in manifest")]
    Digest(String),
    #[error("manifest media type {0} does not match the request's {1}")]
    Mismatch(String, String),
}

fn known(mt: &str) -> Option<&'static str> {
    MEDIA_TYPES.iter().copied().find(|k| *k == mt)
}

/// Reads `bytes` as a manifest; `content_type` is the pusher's or upstream's header.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, Invalid> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| Invalid::Json(e.to_string()))?;
    if raw.schema_version == Some(1) {
        return Err(Invalid::Schema1);
    }
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    let media_type = match (&raw.media_type, header) {
        (Some(m), Some(h)) if m != h => return Err(Invalid::Mismatch(m.clone(), h.to_string())),
        (Some(m), _) => known(m).ok_or_else(|| Invalid::MediaType(m.clone()))?,
        (None, Some(h)) => known(h).ok_or_else(|| Invalid::MediaType(h.to_string()))?,
        (None, None) if raw.manifests.is_some() => OCI_INDEX,
        (None, None) => OCI_MANIFEST,
    };
    let digest =
        |d: &Descriptor| Digest::parse(&d.digest).map_err(|_| Invalid::Digest(d.digest.clone()));
    let mut blobs = Vec::new();
    if let Some(c) = &raw.config {
        blobs.push(digest(c)?);
    }
    for l in &raw.layers {
        blobs.push(digest(l)?);
    }
    let mut manifests = Vec::new();
    for m in raw.manifests.iter().flatten() {
        manifests.push((digest(m)?, m.media_type.clone()));
    }
    let subject = raw.subject.as_ref().map(digest).transpose()?;
    Ok(Parsed {
        media_type,
        blobs,
        manifests,
        subject,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn image_manifest_and_index() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{D1}","size":1}},"layers":[{{"mediaType":"y","digest":"{D2}","size":2}}]}}"#
        );
        let p = parse(m.as_bytes(), Some(DOCKER_MANIFEST)).unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST);
        assert_eq!(p.blobs.len(), 2);
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1}}]}}"#
        );
        let p = parse(i.as_bytes(), None).unwrap();
        assert_eq!(p.media_type, OCI_INDEX);
        assert_eq!(
            p.manifests,
            vec![(Digest::parse(D1).unwrap(), OCI_MANIFEST.to_string())]
        );
        // The header names the type when the body does not.
        let p = parse(i.as_bytes(), Some(DOCKER_LIST)).unwrap();
        assert_eq!(p.media_type, DOCKER_LIST);
    }

    #[test]
    fn refusals() {
        assert!(matches!(parse(b"{", None), Err(Invalid::Json(_))));
        assert_eq!(
            parse(br#"{"schemaVersion":1}"#, None),
            Err(Invalid::Schema1)
        );
        assert!(matches!(
            parse(br#"{"mediaType":"text/plain"}"#, None),
            Err(Invalid::MediaType(_))
        ));
        let bad = r#"{"schemaVersion":2,"layers":[{"digest":"sha256:../x","size":1}]}"#;
        assert!(matches!(
            parse(bad.as_bytes(), None),
            Err(Invalid::Digest(_))
        ));
        let m = format!(r#"{{"mediaType":"{OCI_MANIFEST}"}}"#);
        assert!(matches!(
            parse(m.as_bytes(), Some(DOCKER_MANIFEST)),
            Err(Invalid::Mismatch(..))
        ));
    }
}
