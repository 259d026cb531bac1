//! The registry API through curl, for what skopeo and containerd do not exercise on their
//! own: Docker schema 2 manifests and manifest lists pushed by tag and read back by tag and
//! by digest (Content-Type, Docker-Content-Digest, the exact bytes), monolithic
//! `POST ?digest=` uploads, catalog pagination following the Link header, and eight
//! clients uploading the same blob at once (monolithic, then chunked).

mod common;
mod registry_support;

use std::process::Stdio;

use registry_support::*;

/// The value of header `name` (case-insensitive) in curl -i output.
fn header(resp: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    resp.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .starts_with(&prefix)
            .then(|| l[prefix.len()..].trim().to_string())
    })
}

/// The body of curl -i output (after the last header block).
fn body(resp: &str) -> &str {
    resp.rsplit_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

struct Api<'a> {
    env: &'a Env,
    auth: String,
    work: &'a std::path::Path,
}

impl Api<'_> {
    /// Monolithic upload: `POST /v2/<repo>/blobs/uploads/?digest=` with the bytes.
    fn post_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", sha(bytes));
        let file = self.work.join(&digest[7..]);
        std::fs::write(&file, bytes).unwrap();
        let (code, resp) = self.env.curl(&[
            "-X",
            "POST",
            "-H",
            &self.auth,
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{REG}/v2/{repo}/blobs/uploads/?digest={digest}"),
        ]);
        assert_eq!(code, 201, "{resp}");
        assert_eq!(
            header(&resp, "location").as_deref(),
            Some(format!("/v2/{repo}/blobs/{digest}").as_str()),
            "{resp}"
        );
        assert_eq!(
            header(&resp, "docker-content-digest").as_deref(),
            Some(digest.as_str())
        );
        digest
    }

    /// PUT a manifest by tag with its media type; returns its digest.
    fn put_manifest(&self, repo: &str, tag: &str, media_type: &str, text: &str) -> String {
        let digest = format!("sha256:{}", sha(text.as_bytes()));
        let (code, resp) = self.env.curl(&[
            "-X",
            "PUT",
            "-H",
            &self.auth,
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            text,
            &format!("http://{REG}/v2/{repo}/manifests/{tag}"),
        ]);
        assert_eq!(code, 201, "{resp}");
        assert_eq!(
            header(&resp, "docker-content-digest").as_deref(),
            Some(digest.as_str()),
            "{resp}"
        );
        digest
    }

    /// GET and HEAD by tag and by digest: the same type, digest and bytes each time.
    fn check_manifest(&self, repo: &str, tag: &str, digest: &str, media_type: &str, text: &str) {
        for reference in [tag, digest] {
            let url = format!("http://{REG}/v2/{repo}/manifests/{reference}");
            let accept = format!("Accept: {media_type}");
            let (code, resp) = self.env.curl(&["-H", &accept, &url]);
            assert_eq!(code, 200, "{reference}: {resp}");
            assert_eq!(
                header(&resp, "content-type").as_deref(),
                Some(media_type),
                "{resp}"
            );
            assert_eq!(
                header(&resp, "docker-content-digest").as_deref(),
                Some(digest),
                "{resp}"
            );
            assert_eq!(body(&resp), text, "{reference}: the bytes pushed");
            let (code, resp) = self.env.curl(&["-I", "-H", &accept, &url]);
            assert_eq!(code, 200, "{reference}: {resp}");
            assert_eq!(header(&resp, "content-type").as_deref(), Some(media_type));
            assert_eq!(
                header(&resp, "docker-content-digest").as_deref(),
                Some(digest)
            );
            assert_eq!(
                header(&resp, "content-length"),
                Some(text.len().to_string())
            );
            assert_eq!(body(&resp), "", "HEAD has no body");
        }
    }

    /// A Docker schema 2 image (config + one layer) in `repo`; returns (digest, text).
    fn docker_image(&self, repo: &str, tag: &str, seed: u64) -> (String, String) {
        const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
        let layer = layer_tar(30_000, seed);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
            sha(&layer)
        );
        let layer_digest = self.post_blob(repo, &layer);
        let config_digest = self.post_blob(repo, config.as_bytes());
        let text = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "size": config.len(), "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": layer.len(), "digest": layer_digest}],
        })
        .to_string();
        let digest = self.put_manifest(repo, tag, DOCKER_MANIFEST, &text);
        self.check_manifest(repo, tag, &digest, DOCKER_MANIFEST, &text);
        (digest, text)
    }
}

#[test]
fn docker_manifests_monolithic_uploads_catalog_pages_and_concurrent_uploads() {
    if !tools(&["curl"]) {
        return;
    }
    let env = Env::start("regdocker", "", &[]);
    let work = tempfile::tempdir().unwrap();
    let api = Api {
        env: &env,
        auth: format!("Authorization: Bearer {}", env.token),
        work: work.path(),
    };

    // A monolithic upload is stored and served as sent.
    let data = noise(100_000, 5);
    let digest = api.post_blob("team/docker", &data);
    let out = work.path().join("got");
    env.run(
        "curl",
        &[
            "-sf",
            "-o",
            &out.to_string_lossy(),
            &format!("http://{REG}/v2/team/docker/blobs/{digest}"),
        ],
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // Docker schema 2 manifest and manifest list.
    let (amd64, amd64_text) = api.docker_image("team/docker", "amd64", 11);
    let (arm64, arm64_text) = api.docker_image("team/docker", "arm64", 12);
    const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    let entry = |d: &str, text: &str, arch: &str| {
        serde_json::json!({"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": text.len(), "digest": d, "platform": {"architecture": arch, "os": "linux"}})
    };
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [entry(&amd64, &amd64_text, "amd64"), entry(&arm64, &arm64_text, "arm64")],
    })
    .to_string();
    let list_digest = api.put_manifest("team/docker", "multi", DOCKER_LIST, &list);
    api.check_manifest("team/docker", "multi", &list_digest, DOCKER_LIST, &list);
    // A list naming a manifest the repository does not have is refused.
    let dangling = list.replace(&amd64[7..], &"0".repeat(64));
    let (code, resp) = env.curl(&[
        "-X",
        "PUT",
        "-H",
        &api.auth,
        "-H",
        &format!("Content-Type: {DOCKER_LIST}"),
        "--data-binary",
        &dangling,
        &format!("http://{REG}/v2/team/docker/manifests/broken"),
    ]);
    assert_eq!(code, 400, "{resp}");
    assert!(resp.contains("MANIFEST_UNKNOWN"), "{resp}");

    // Catalog pages of two, following the Link header to the end.
    for (i, repo) in ["a/one", "b/two", "c/three", "d/four"].iter().enumerate() {
        api.docker_image(repo, "1", 20 + i as u64);
    }
    let mut url = format!("http://{REG}/v2/_catalog?n=2");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (code, resp) = env.curl(&[&url]);
        assert_eq!(code, 200, "{resp}");
        let page: serde_json::Value = serde_json::from_str(body(&resp)).unwrap();
        let repos: Vec<String> = page["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        assert!(repos.len() <= 2, "{resp}");
        seen.extend(repos);
        pages += 1;
        match header(&resp, "link") {
            Some(link) => {
                assert!(link.ends_with(">; rel=\"next\""), "{link}");
                let next = &link[1..link.find('>').unwrap()];
                assert!(next.starts_with("/v2/_catalog?n=2&last="), "{link}");
                url = format!("http://{REG}{next}");
            }
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(
        seen,
        ["a/one", "b/two", "c/three", "d/four", "team/docker"],
        "every repository once, in order"
    );
    assert_eq!(pages, 3);

    // Eight clients upload the same 4 MB blob at once: all succeed, one file is stored.
    let blob = noise(4_000_000, 99);
    let blob_digest = format!("sha256:{}", sha(&blob));
    let blob_file = work.path().join("same-blob");
    std::fs::write(&blob_file, &blob).unwrap();
    let before = blob_files(&env.storage());
    let children: Vec<_> = (0..8)
        .map(|i| {
            env.cmd(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-X",
                    "POST",
                    "-H",
                    &api.auth,
                    "--data-binary",
                    &format!("@{}", blob_file.display()),
                    &format!("http://{REG}/v2/same/r{i}/blobs/uploads/?digest={blob_digest}"),
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "201");
    }
    assert_eq!(blob_files(&env.storage()), before + 1, "one stored file");
    assert_eq!(uploads_left(&env.storage()), 0, "no temporary file left");
    env.run(
        "curl",
        &[
            "-sf",
            "-o",
            &out.to_string_lossy(),
            &format!("http://{REG}/v2/same/r3/blobs/{blob_digest}"),
        ],
    );
    assert_eq!(sha(&std::fs::read(&out).unwrap()), blob_digest[7..]);

    // The same with chunked uploads (POST, PATCH, PUT ?digest=) finishing together.
    let blob = noise(3_000_000, 98);
    let blob_digest = format!("sha256:{}", sha(&blob));
    std::fs::write(&blob_file, &blob).unwrap();
    let before = blob_files(&env.storage());
    let ns = env.host.ns.clone();
    let curl = |args: &[&str]| -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "curl", "-s", "-i", "-H", &api.auth])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    std::thread::scope(|s| {
        let uploads: Vec<_> = (0..8)
            .map(|i| {
                let (curl, blob_file, blob_digest) = (&curl, &blob_file, &blob_digest);
                s.spawn(move || {
                    let start = curl(&[
                        "-X",
                        "POST",
                        &format!("http://{REG}/v2/chunked/r{i}/blobs/uploads/"),
                    ]);
                    let location = header(&start, "location").expect("upload location");
                    let patch = curl(&[
                        "-X",
                        "PATCH",
                        "--data-binary",
                        &format!("@{}", blob_file.display()),
                        &format!("http://{REG}{location}"),
                    ]);
                    let location = header(&patch, "location").expect("upload location");
                    curl(&[
                        "-X",
                        "PUT",
                        &format!("http://{REG}{location}?digest={blob_digest}"),
                    ])
                })
            })
            .collect();
        for u in uploads {
            let resp = u.join().unwrap();
            assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
        }
    });
    assert_eq!(blob_files(&env.storage()), before + 1, "one stored file");
    assert_eq!(uploads_left(&env.storage()), 0, "no temporary file left");
}
