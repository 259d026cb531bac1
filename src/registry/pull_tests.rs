//! Pull-through against a fake upstream that demands a Bearer token and sends blobs through
//! a redirect (as Docker Hub does): the token flow, singleflight under 20 concurrent misses,
//! digest verification and offline mode.

use std::sync::atomic::AtomicUsize;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};

use super::*;

#[derive(Default)]
struct Fake {
    tokens: AtomicUsize,
    manifests: AtomicUsize,
    blobs: AtomicUsize,
    /// Requests to the CDN that carried the registry token (must stay 0).
    leaked: AtomicUsize,
    manifest: Vec<u8>,
    good: (String, Vec<u8>),
    /// Served under a digest it does not have.
    bad: (String, Vec<u8>),
    /// Sent slowly, in four pieces; `finished` once the last piece went out.
    slow: (String, Vec<u8>),
    finished: std::sync::atomic::AtomicBool,
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", path::hex(&Sha256::digest(b)))
}

async fn fake(axum::extract::State(f): axum::extract::State<Arc<Fake>>, req: Request) -> Response {
    let p = req.uri().path().to_string();
    let authed = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some("Bearer t0k");
    if p == "/token" {
        let q = req.uri().query().unwrap_or("");
        assert!(
            q.contains("service=fake") && q.contains("scope=repository:library/app:pull"),
            "{q}"
        );
        f.tokens.fetch_add(1, Ordering::SeqCst);
        return r#"{"token":"t0k","expires_in":300}"#.into_response();
    }
    if let Some(d) = p.strip_prefix("/cdn/") {
        if req.headers().contains_key("authorization") {
            f.leaked.fetch_add(1, Ordering::SeqCst);
        }
        f.blobs.fetch_add(1, Ordering::SeqCst);
        if d == f.slow.0 {
            let len = f.slow.1.len();
            let state = (f.clone(), 0usize);
            let pieces = futures_util::stream::unfold(state, |(f, i)| async move {
                if i == 4 {
                    f.finished.store(true, Ordering::SeqCst);
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let q = f.slow.1.len() / 4;
                let piece = Bytes::copy_from_slice(&f.slow.1[i * q..(i + 1) * q]);
                Some((Ok::<_, std::io::Error>(piece), (f, i + 1)))
            });
            let body = axum::body::Body::from_stream(pieces);
            return ([("content-length", len.to_string())], body).into_response();
        }
        // Slow enough that all concurrent misses arrive while this one downloads.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let body = if d == f.good.0 {
            f.good.1.clone()
        } else {
            f.bad.1.clone()
        };
        return body.into_response();
    }
    if !authed {
        let mut h = HeaderMap::new();
        let port = req
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let challenge = format!(
            r#"Bearer realm="http://{port}/token",service="fake",scope="repository:library/app:pull""#
        );
        h.insert("www-authenticate", challenge.parse().unwrap());
        return (StatusCode::UNAUTHORIZED, h).into_response();
    }
    if p == "/v2/library/app/manifests/1" {
        f.manifests.fetch_add(1, Ordering::SeqCst);
        let mut h = HeaderMap::new();
        h.insert("content-type", manifest::OCI_MANIFEST.parse().unwrap());
        return (h, f.manifest.clone()).into_response();
    }
    if let Some(d) = p.strip_prefix("/v2/library/app/blobs/")
        && (d == f.good.0 || d == f.bad.0 || d == f.slow.0)
    {
        let mut h = HeaderMap::new();
        h.insert("location", format!("/cdn/{d}").parse().unwrap());
        return (StatusCode::TEMPORARY_REDIRECT, h).into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

const DESC: &str = r#"cluster:
  name: lab
  domain: lab.test
  kubernetes_version: "1.31.4"
bootstrapper:
  interface: eth0
  address: 10.20.0.2
network:
  subnet: 10.20.0.0/24
  gateway: 10.20.0.1
  dhcp:
    mode: authoritative
    unknown_machines: ignore
os:
  profile: flatcar
  version: "4081.2.0"
nodes:
  - mac: 52:54:00:00:00:11
    hostname: cp-1
    ip: 10.20.0.11
    role: control-plane
registry:
  upstreams:
    - name: docker.io
      url: http://UPSTREAM
"#;

async fn get(client: &Client<HttpConnector, Empty<Bytes>>, url: String) -> (StatusCode, Vec<u8>) {
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_with_token_redirect_and_singleflight() {
    let good = b"layer bytes".repeat(10_000);
    // 4 MiB, sent in four 1 MiB pieces 300 ms apart.
    let slow: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
    let bad_claimed = digest(b"what the digest promises");
    let good_d = digest(&good);
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"digest":"{good_d}","size":{}}},"layers":[]}}"#,
        manifest::OCI_MANIFEST,
        good.len()
    );
    let fake_state = Arc::new(Fake {
        manifest: m.clone().into_bytes(),
        good: (good_d.clone(), good.clone()),
        bad: (bad_claimed.clone(), b"something else".to_vec()),
        slow: (digest(&slow), slow.clone()),
        ..Default::default()
    });
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let fake_router = Router::new().fallback(fake).with_state(fake_state.clone());
    tokio::spawn(async move { axum::serve(up, fake_router).await });

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cluster-desc.yaml");
    std::fs::write(&cfg, DESC.replace("UPSTREAM", &up_addr.to_string())).unwrap();
    let plan = Plan::from_desc(&crate::desc::load(&cfg).unwrap());
    let store: Arc<dyn crate::store::Store> =
        Arc::new(crate::store::open(&dir.path().join("state")).unwrap());
    let options = crate::app::AppOptions {
        admin_token_hash: Some(crate::boot::hash_token("adm")),
        ..Default::default()
    };
    let app = App::new(cfg, plan, store, options).unwrap();
    let storage_dir = dir.path().join("registry");
    let registry = Arc::new(Registry::open(&storage_dir, Options::default()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        None,
        app.clone(),
        registry.clone(),
        std::future::pending(),
    ));

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let base = format!("http://{addr}/v2/library/app");
    let (status, body) = get(&client, format!("{base}/manifests/1?ns=docker.io")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, m.as_bytes());
    assert_eq!(fake_state.tokens.load(Ordering::SeqCst), 1);

    // 20 clients miss the same blob at once: one upstream download, everyone served.
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (
                client.clone(),
                format!("{base}/blobs/{good_d}?ns=docker.io"),
            );
            tokio::spawn(async move { get(&client, url).await })
        })
        .collect();
    for p in pulls {
        let (status, body) = p.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body == good, "wrong blob content");
    }
    assert_eq!(fake_state.blobs.load(Ordering::SeqCst), 1, "singleflight");
    assert_eq!(
        fake_state.leaked.load(Ordering::SeqCst),
        0,
        "token sent to the CDN"
    );
    assert_eq!(fake_state.tokens.load(Ordering::SeqCst), 1, "token cached");
    assert_eq!(Counters::get(&registry.counters.upstream_fetches), 2);
    // Later pulls are local, also by the direct name.
    let (status, _) = get(
        &client,
        format!("http://{addr}/v2/docker.io/library/app/blobs/{good_d}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake_state.blobs.load(Ordering::SeqCst), 1);
    let served = Counters::get(&registry.counters.bytes_served)
        + registry.blob_stats.bytes.load(Ordering::Relaxed);
    assert!(served >= 21 * good.len() as u64, "{served}");

    // A client missing a blob that is still downloading gets bytes before the download
    // ends (it follows the temporary file), and the whole blob in the end.
    let url = format!("{base}/blobs/{}?ns=docker.io", fake_state.slow.0);
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let mut early = false;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            if got.is_empty() {
                early = !fake_state.finished.load(Ordering::SeqCst);
            }
            got.extend_from_slice(&data);
        }
    }
    assert!(
        early,
        "the first bytes came only after the upstream had sent everything"
    );
    assert!(got == slow, "followed blob differs");
    assert!(Counters::get(&registry.counters.followed) >= 1);

    // Content that does not match its digest is never served whole, and not stored. (The
    // reply may have started while the download ran: then its body ends in an error.)
    let resp = client
        .get(
            format!("{base}/blobs/{bad_claimed}?ns=docker.io")
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let whole = resp.into_body().collect().await.is_ok();
    assert!(status != StatusCode::OK || !whole, "{status} {whole}");
    let bad_d = path::Digest::parse(&bad_claimed).unwrap();
    assert_eq!(registry.storage.blob_size(&bad_d), None);
    assert_eq!(
        std::fs::read_dir(storage_dir.join("uploads"))
            .unwrap()
            .count(),
        0
    );

    // Offline: what is stored is served, nothing is fetched.
    let offline = Arc::new(
        Registry::open(
            &storage_dir,
            Options {
                offline: true,
                max_upload: 1000,
            },
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let off = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, None, app, offline, std::future::pending()));
    let (status, _) = get(
        &client,
        format!("http://{off}/v2/library/app/manifests/1?ns=docker.io"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(
        &client,
        format!("http://{off}/v2/library/app/blobs/{bad_claimed}?ns=docker.io"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("BLOB_UNKNOWN"));
    assert_eq!(
        fake_state.blobs.load(Ordering::SeqCst),
        3,
        "good, slow and bad once each; nothing while offline"
    );

    // The upload limit, for one body and for chunks adding up: 413 and nothing is kept.
    let admin = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<Bytes>>();
    let send = |method: &str, url: String, body: Vec<u8>| {
        let req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", "Bearer adm")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap();
        admin.request(req)
    };
    let big = vec![7u8; 5000];
    let url = format!(
        "http://{off}/v2/team/x/blobs/uploads/?digest={}",
        digest(&big)
    );
    let resp = send("POST", url, big).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let resp = send(
        "POST",
        format!("http://{off}/v2/team/x/blobs/uploads/"),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = send("PATCH", format!("http://{off}{location}"), vec![1; 800])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["range"], "0-799");
    let resp = send("PATCH", format!("http://{off}{location}"), vec![1; 800])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        std::fs::read_dir(storage_dir.join("uploads"))
            .unwrap()
            .count(),
        0
    );
    // Without the token, no upload starts.
    let resp = client
        .request(
            hyper::Request::post(format!("http://{off}/v2/team/x/blobs/uploads/"))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
}
