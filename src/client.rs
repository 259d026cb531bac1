//! The CLI's side of the API: `slipway status` and `slipway node ...` talk to a running
//! `slipway serve` (its store is locked while it runs), over plain HTTP/1.1.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::http::api::NodeView;

/// Sends one request and returns the status and body (a JSON `{"error": ...}` body of a
/// failed call becomes the error message).
pub async fn call(method: Method, url: &str, bearer: Option<&str>) -> Result<(StatusCode, Bytes)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    if let Some(t) = bearer {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .with_context(|| format!("bad URL {url}"))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .with_context(|| format!("{url}: no answer within 30 s"))?
        .with_context(|| format!("cannot reach slipway at {url}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{url}: {status}: {msg}");
    }
    Ok((status, body))
}

pub async fn nodes(server: &str, token: Option<&str>) -> Result<Vec<NodeView>> {
    let (_, body) = call(Method::GET, &format!("{server}/api/v1/nodes"), token).await?;
    serde_json::from_slice(&body).context("unexpected answer from /api/v1/nodes")
}

pub async fn node(server: &str, id: &str, token: Option<&str>) -> Result<NodeView> {
    let (_, body) = call(Method::GET, &format!("{server}/api/v1/nodes/{id}"), token).await?;
    serde_json::from_slice(&body).context("unexpected answer from /api/v1/nodes/{id}")
}

/// The admin token for reads from outside the cluster's networks: from `file` (`--token`),
/// else the token itself in `SLIPWAY_TOKEN`, else none (inside, reads need none).
pub fn read_token(file: Option<&std::path::Path>) -> Result<Option<String>> {
    let token = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the admin token from {}", f.display()))?,
        None => std::env::var("SLIPWAY_TOKEN").unwrap_or_default(),
    };
    let token = token.trim();
    if file.is_some() && token.is_empty() {
        bail!("the admin token file is empty");
    }
    Ok((!token.is_empty()).then(|| token.to_string()))
}

/// `slipway status`: the table (or one node's timeline), once or redrawn every 2 s. While
/// watching, a failed request is shown in place of the table and retried at the next tick
/// (the server may be restarting).
pub async fn status(
    base: &str,
    node_id: Option<&str>,
    json: bool,
    watch: bool,
    token: Option<&str>,
) -> Result<()> {
    use std::io::Write as _;
    loop {
        let now = crate::store::now_millis();
        let text = async {
            Ok::<_, anyhow::Error>(match (node_id, json) {
                (Some(id), false) => timeline(&node(base, id, token).await?),
                (Some(id), true) => format!(
                    "{}\n",
                    serde_json::to_string_pretty(&node(base, id, token).await?)?
                ),
                (None, false) => status_table(&nodes(base, token).await?, now),
                (None, true) => format!(
                    "{}\n",
                    serde_json::to_string_pretty(&nodes(base, token).await?)?
                ),
            })
        }
        .await;
        if !watch {
            print!("{}", text?);
            return Ok(());
        }
        let text = text.unwrap_or_else(|e| format!("error: {e:#}\n(retrying every 2 s)\n"));
        // Clear the screen and redraw from the top.
        print!("\x1b[2J\x1b[H{base}  {}\n\n{text}", format_millis(now));
        std::io::stdout().flush()?;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

fn age(now_ms: u64, at_ms: Option<u64>) -> String {
    let Some(at) = at_ms else {
        return "-".to_string();
    };
    let s = now_ms.saturating_sub(at) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn enum_str<T: serde::Serialize>(v: &Option<T>) -> String {
    v.as_ref()
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "-".to_string())
}

/// The node table: one line per machine with its state and how long it has been in it.
pub fn status_table(nodes: &[NodeView], now_ms: u64) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "MAC".into(),
        "IP".into(),
        "ROLE".into(),
        "GPU".into(),
        "STATE".into(),
        "SINCE".into(),
        "DETAIL".into(),
    ]];
    for n in nodes {
        rows.push([
            n.name.clone().unwrap_or_else(|| "-".into()),
            n.mac.clone(),
            n.ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
            enum_str(&n.role),
            enum_str(&n.gpu),
            if n.stuck {
                format!("{} (stuck)", n.state)
            } else {
                n.state.to_string()
            },
            age(now_ms, n.updated_at),
            n.detail.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c == 7 {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let mut counts = std::collections::BTreeMap::new();
    for n in nodes {
        *counts.entry(n.state).or_insert(0usize) += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(s, c)| format!("{c} {s}")).collect();
    let _ = writeln!(out, "\n{} nodes: {}", nodes.len(), summary.join(", "));
    out
}

/// One node's timeline, oldest first, with the time each step took.
pub fn timeline(n: &NodeView) -> String {
    let mut out = format!(
        "{} ({}) — {}\n",
        n.name.as_deref().unwrap_or("-"),
        n.mac,
        n.state
    );
    let mut prev: Option<u64> = None;
    for t in &n.history {
        let step = prev.map_or(String::new(), |p| {
            format!("+{:.1}s", t.at.saturating_sub(p) as f64 / 1000.0)
        });
        let _ = writeln!(
            out,
            "  {}  {:<15} {:>9}  {}",
            format_millis(t.at),
            t.state.as_str(),
            step,
            t.detail.as_deref().unwrap_or("")
        );
        prev = Some(t.at);
    }
    out
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil-from-days (Howard Hinnant), valid for the Unix era.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::NodeState;
    use crate::store::Transition;

    #[test]
    fn dates() {
        assert_eq!(format_millis(0), "1970-01-01 00:00:00");
        assert_eq!(format_millis(1_795_000_000_000), "2026-11-18 11:06:40");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn table_and_timeline() {
        let n = NodeView {
            name: Some("cp-1".into()),
            mac: "52:54:00:00:00:11".into(),
            ip: Some("10.0.0.11".parse().unwrap()),
            role: Some(crate::desc::Role::ControlPlane),
            gpu: Some(crate::desc::Gpu::None),
            state: NodeState::Booting,
            detail: Some("kernel".into()),
            updated_at: Some(10_000),
            stuck: true,
            history: vec![
                Transition {
                    state: NodeState::Discovered,
                    at: 1_000,
                    detail: None,
                },
                Transition {
                    state: NodeState::Booting,
                    at: 3_500,
                    detail: Some("kernel".into()),
                },
            ],
            events: vec![],
        };
        let t = status_table(std::slice::from_ref(&n), 75_000);
        let line = t.lines().nth(1).unwrap();
        assert!(line.starts_with("cp-1"), "{t}");
        for cell in [
            "control-plane",
            "booting (stuck)",
            "1m05s",
            "kernel",
            "10.0.0.11",
        ] {
            assert!(line.contains(cell), "{cell} missing: {t}");
        }
        assert!(t.contains("1 nodes: 1 booting"), "{t}");
        let tl = timeline(&n);
        assert!(tl.contains("booting") && tl.contains("+2.5s"), "{tl}");
    }
}
