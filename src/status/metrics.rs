//! Prometheus metrics at `/metrics`. The servers' hot paths keep their own atomic counters
//! (no registry lookups per packet); a scrape copies them into the `metrics` recorder next to
//! the HTTP request metrics and the gauges computed from the store, then renders.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::app::App;
use crate::status::NodeState;
use crate::store::{LeaseState, StoreError};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder (installed on first use).
fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
            ])
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder (a test harness) may already be installed; ours still renders
        // what is recorded through it only, so fail loudly in that case.
        metrics::set_global_recorder(recorder).expect("no other metrics recorder installed");
        handle
    })
}

/// Installs the recorder before the servers start, so the first requests are counted.
pub fn init() {
    let _ = handle();
}

/// Middleware: requests by route and status, with latency.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    counter!("slipway_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    histogram!("slipway_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Renders every metric. Blocking (reads the store).
pub fn render(app: &App) -> Result<String, StoreError> {
    let handle = handle();
    if let Some(s) = app.dhcp_stats.get() {
        let c = |outcome: &'static str, v: &std::sync::atomic::AtomicU64| {
            counter!("slipway_dhcp_packets_total", "direction" => "in", "outcome" => outcome)
                .absolute(v.load(Ordering::Relaxed));
        };
        c("received", &s.received);
        c("malformed", &s.malformed);
        c("ignored", &s.ignored);
        c("shed", &s.dropped_overload);
        let r = |kind: &'static str, v: &std::sync::atomic::AtomicU64| {
            counter!("slipway_dhcp_packets_total", "direction" => "out", "type" => kind)
                .absolute(v.load(Ordering::Relaxed));
        };
        r("offer", &s.offers);
        r("ack", &s.acks);
        r("nak", &s.naks);
        for (kind, per_outcome) in crate::dhcp::server::REQUEST_KINDS.iter().zip(&s.by_kind) {
            for (outcome, v) in crate::dhcp::server::Outcome::ALL.iter().zip(per_outcome) {
                counter!("slipway_dhcp_requests_total", "type" => *kind, "outcome" => outcome.as_str())
                    .absolute(v.load(Ordering::Relaxed));
            }
        }
        counter!("slipway_dhcp_commit_failures_total")
            .absolute(s.commit_failures.load(Ordering::Relaxed));
    }
    let dns = &crate::dns::METRICS;
    for (outcome, v) in [
        ("malformed", &dns.malformed),
        ("forwarded", &dns.forwarded),
        ("forward_failed", &dns.forward_failed),
        ("refused", &dns.refused),
    ] {
        counter!("slipway_dns_queries_total", "outcome" => outcome)
            .absolute(v.load(Ordering::Relaxed));
    }

    if let Some(t) = app.tftp_stats.get() {
        for (outcome, v) in [
            ("requested", &t.requests),
            ("started", &t.started),
            ("completed", &t.completed),
            ("failed", &t.failed),
            ("size_probe", &t.size_probes),
            ("refused", &t.refused),
            ("busy", &t.busy),
        ] {
            counter!("slipway_tftp_transfers_total", "outcome" => outcome)
                .absolute(v.load(Ordering::Relaxed));
        }
        for (event, v) in [
            ("waited", &t.waited),
            ("wait_expired", &t.wait_expired),
            ("duplicate", &t.duplicates),
        ] {
            counter!("slipway_tftp_queue_total", "event" => event)
                .absolute(v.load(Ordering::Relaxed));
        }
        counter!("slipway_tftp_bytes_total").absolute(t.bytes_sent.load(Ordering::Relaxed));
        counter!("slipway_tftp_bad_packets_total").absolute(t.bad_packets.load(Ordering::Relaxed));
    }
    if let Some(r) = app.registry.get() {
        let c = &r.counters;
        counter!("slipway_registry_bytes_served_total")
            .absolute(c.bytes_served.load(Ordering::Relaxed));
        counter!("slipway_registry_cache_total", "result" => "hit")
            .absolute(c.cache_hits.load(Ordering::Relaxed));
        counter!("slipway_registry_cache_total", "result" => "miss")
            .absolute(c.cache_misses.load(Ordering::Relaxed));
        counter!("slipway_registry_cache_total", "result" => "followed")
            .absolute(c.followed.load(Ordering::Relaxed));
        counter!("slipway_registry_upstream_fetches_total")
            .absolute(c.upstream_fetches.load(Ordering::Relaxed));
        counter!("slipway_registry_upstream_bytes_total")
            .absolute(c.upstream_bytes.load(Ordering::Relaxed));
        counter!("slipway_registry_uploads_total").absolute(c.uploads.load(Ordering::Relaxed));
    }
    let files = &app.files.stats;
    counter!("slipway_http_file_requests_total").absolute(files.requests.load(Ordering::Relaxed));
    counter!("slipway_http_file_bytes_total").absolute(files.bytes.load(Ordering::Relaxed));

    let now = crate::store::now_secs();
    let active = app
        .store
        .leases()?
        .iter()
        .filter(|l| l.state == LeaseState::Bound && l.expires_at > now)
        .count();
    gauge!("slipway_dhcp_active_leases").set(active as f64);

    let plan = app.plan();
    let views = crate::http::api::node_views(&plan, app.store.nodes()?, false);
    for state in NodeState::ALL {
        let n = views.iter().filter(|v| v.state == state).count();
        gauge!("slipway_nodes", "state" => state.as_str()).set(n as f64);
    }
    gauge!("slipway_plan_generation").set(app.generation() as f64);
    Ok(handle.render())
}
