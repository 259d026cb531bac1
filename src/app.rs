//! State shared by every server: the current plan (swapped atomically on reload), the
//! persistent store, and where the description lives.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::desc::{self, Diagnostics};
use crate::http::files::Files;
use crate::plan::Plan;
use crate::status::NodeState;
use crate::store::{Op, Store, StoreError};

pub struct App {
    pub config_path: PathBuf,
    pub store: Arc<dyn Store>,
    /// Boot assets served over HTTP (`/assets/`, `/ipxe/`) and their counters.
    pub files: Files,
    plan: ArcSwap<Plan>,
    generation: AtomicU64,
    /// Machines with dynamic leases (hostname, address), published by DHCP for DNS.
    dynamic_hosts: ArcSwap<Vec<(String, Ipv4Addr)>>,
    dynamic_version: AtomicU64,
}

/// What a successful reload changed, for the log and the event record.
#[derive(Debug)]
pub struct Reloaded {
    pub generation: u64,
    pub nodes: usize,
    /// Settings that only take effect on restart (bound sockets do not move).
    pub needs_restart: Vec<&'static str>,
}

impl App {
    pub fn new(
        config_path: PathBuf,
        plan: Plan,
        store: Arc<dyn Store>,
        images_dir: PathBuf,
    ) -> Arc<App> {
        Arc::new(App {
            config_path,
            store,
            files: Files::new(images_dir),
            plan: ArcSwap::from_pointee(plan),
            generation: AtomicU64::new(1),
            dynamic_hosts: ArcSwap::from_pointee(Vec::new()),
            dynamic_version: AtomicU64::new(0),
        })
    }

    /// The plan in force now. Callers hold the `Arc` for the length of one request.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the set of dynamically leased hosts (DNS serves `<hostname>.<domain>`).
    pub fn set_dynamic_hosts(&self, hosts: Vec<(String, Ipv4Addr)>) {
        self.dynamic_hosts.store(Arc::new(hosts));
        self.dynamic_version.fetch_add(1, Ordering::AcqRel);
    }

    pub fn dynamic_hosts(&self) -> Arc<Vec<(String, Ipv4Addr)>> {
        self.dynamic_hosts.load_full()
    }

    /// (plan generation, dynamic-host version): DNS rebuilds its zone when this changes.
    /// Read it before the plan and the hosts; both are published before the counters move.
    pub fn dns_version(&self) -> (u64, u64) {
        (
            self.generation.load(Ordering::Acquire),
            self.dynamic_version.load(Ordering::Acquire),
        )
    }

    /// Re-reads the description. An invalid file leaves the current plan serving.
    pub fn reload(&self) -> Result<Reloaded, Diagnostics> {
        let result = desc::load(&self.config_path).map(|d| Plan::from_desc(&d));
        let new = match result {
            Ok(p) => p,
            Err(diags) => {
                let msg = format!(
                    "reload of {} failed: {} error(s); the previous plan stays in force",
                    self.config_path.display(),
                    diags.len()
                );
                if let Err(e) = self.store.append_event("plan.reload_failed", None, &msg) {
                    tracing::warn!(error = %e, "could not record reload failure event");
                }
                return Err(diags);
            }
        };
        let old = self.plan();
        let (ob, nb) = (&old.bootstrapper, &new.bootstrapper);
        let mut needs_restart = Vec::new();
        if ob.interface != nb.interface || ob.address != nb.address {
            needs_restart.push("bootstrapper.interface/address");
        }
        if (ob.http_port, ob.registry_port, ob.dns_port, ob.tftp_port)
            != (nb.http_port, nb.registry_port, nb.dns_port, nb.tftp_port)
        {
            needs_restart.push("bootstrapper.ports");
        }
        let nodes = new.nodes.len();
        self.plan.store(Arc::new(new));
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let msg = format!(
            "plan generation {generation} loaded from {}: {nodes} nodes",
            self.config_path.display()
        );
        if let Err(e) = self.store.append_event("plan.reloaded", None, &msg) {
            tracing::warn!(error = %e, "could not record reload event");
        }
        Ok(Reloaded {
            generation,
            nodes,
            needs_restart,
        })
    }
    /// Records that the machine at `ip` reached `state` (forward only: a late TFTP retry or a
    /// re-fetched kernel never moves an installed node back), with an event of kind
    /// `node.<state>`. The machine is found by its planned address, else by its lease.
    /// Returns the MAC, or `None` for an address that is no known machine. Blocking: call it
    /// from a server thread or `spawn_blocking`.
    pub fn node_seen(
        &self,
        ip: Ipv4Addr,
        state: NodeState,
        detail: &str,
    ) -> Result<Option<String>, StoreError> {
        let plan = self.plan();
        let (mac, hostname) = match plan.node_by_ip(ip) {
            Some(n) => (n.mac.to_string(), Some(n.hostname.clone())),
            None => match self.store.lease_by_ip(ip)? {
                Some(lease) => (lease.mac, lease.hostname),
                None => return Ok(None),
            },
        };
        let ops = [
            Op::Transition {
                mac: mac.clone(),
                hostname,
                state,
                detail: Some(detail.to_string()),
                at_millis: crate::store::now_millis(),
                forward_only: true,
            },
            Op::Event {
                kind: format!("node.{state}"),
                mac: Some(mac.clone()),
                message: detail.to_string(),
            },
        ];
        for result in self.store.apply(&ops)? {
            result?;
        }
        Ok(Some(mac))
    }
}
