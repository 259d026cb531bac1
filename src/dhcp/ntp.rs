//! NTP servers the description names by DNS name. DHCP option 42 carries addresses only, so
//! a thread resolves the names (never on the request path: a resolver can take seconds) and
//! the server hands out what resolved. A name that does not resolve is logged, not silently
//! dropped; nodes still get every name in their timesyncd configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::serve::Shutdown;

/// Names are looked up again this often (pool names rotate their addresses).
const REFRESH: Duration = Duration::from_secs(3600);
/// After a failure, this often.
const RETRY: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(200);

/// The addresses resolved so far, shared with the receiver threads (read once per batch).
#[derive(Debug, Default)]
pub struct Resolved(arc_swap::ArcSwap<Vec<Ipv4Addr>>);

impl Resolved {
    pub fn get(&self) -> Arc<Vec<Ipv4Addr>> {
        self.0.load_full()
    }

    fn set(&self, addrs: Vec<Ipv4Addr>) {
        self.0.store(Arc::new(addrs));
    }
}

/// The entries of `ntp` that are names (addresses go into option 42 as written).
pub fn names(ntp: &[String]) -> Vec<&str> {
    ntp.iter()
        .filter(|n| n.parse::<IpAddr>().is_err())
        .map(String::as_str)
        .collect()
}

/// The IPv4 addresses of `name`, from the system resolver.
pub fn resolve(name: &str) -> std::io::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for a in (name, 123).to_socket_addrs()? {
        if let SocketAddr::V4(v4) = a
            && !out.contains(v4.ip())
        {
            out.push(*v4.ip());
        }
    }
    Ok(out)
}

/// Until shutdown: resolves the plan's NTP names at start, after every reload, hourly, and
/// every minute while one fails (warned about once per description).
pub fn run(app: &App, resolved: &Resolved, shutdown: &Shutdown) {
    let mut generation = None;
    let mut next = Instant::now();
    while !shutdown.is_requested() {
        let g = app.generation();
        if generation != Some(g) || Instant::now() >= next {
            let first = generation != Some(g);
            generation = Some(g);
            let plan = app.plan();
            let mut all = Vec::new();
            let mut failed = false;
            for name in names(&plan.network.ntp) {
                let why = match resolve(name) {
                    Ok(addrs) if !addrs.is_empty() => {
                        tracing::debug!(name, ?addrs, "NTP server resolved for DHCP option 42");
                        for a in addrs {
                            if !all.contains(&a) {
                                all.push(a);
                            }
                        }
                        continue;
                    }
                    Ok(_) => "no IPv4 address".to_string(),
                    Err(e) => e.to_string(),
                };
                failed = true;
                if first {
                    tracing::warn!(
                        name,
                        why,
                        "NTP server name does not resolve: left out of DHCP option 42 until it does"
                    );
                }
            }
            resolved.set(all);
            next = Instant::now() + if failed { RETRY } else { REFRESH };
        }
        std::thread::sleep(TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_are_resolved_and_localhost_resolves() {
        let ntp = ["10.0.0.5".to_string(), "time.lab".into(), "::1".into()];
        assert_eq!(names(&ntp), ["time.lab"]);
        // /etc/hosts, no network needed.
        assert!(resolve("localhost").unwrap().contains(&Ipv4Addr::LOCALHOST));
    }
}
