//! State shared by every server: the current plan (swapped atomically on reload), the
//! persistent store, and where the description lives.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::desc::{self, Diagnostics};
use crate::http::files::Files;
use crate::plan::Plan;
use crate::render::{RenderError, Renderer};
use crate::status::NodeState;
use crate::store::{Op, Store, StoreError};

pub struct App {
    pub config_path: PathBuf,
    pub store: Arc<dyn Store>,
    /// Operator template overrides (`--templates`), re-read on reload.
    pub templates_dir: Option<PathBuf>,
    renderer: ArcSwap<Renderer>,
    /// SHA-256 (hex) of the admin token that mutating API calls must present.
    pub admin_token_hash: Option<String>,
    pub loop_guard: crate::boot::LoopGuard,
    /// New events, for the status page's live stream (see status::feed).
    pub feed: tokio::sync::broadcast::Sender<crate::store::Event>,
    /// A node with no progress for this long is marked stuck on the page and in the API.
    pub stuck_after_millis: u64,
    /// MACs the operator approved (served like `enroll-worker` machines), from the store.
    approved: ArcSwap<std::collections::HashSet<crate::desc::Mac>>,
    /// Unknown machines DHCP has seen, by MAC (see dhcp::unknown).
    unknown_seen: std::sync::Mutex<HashMap<String, crate::dhcp::unknown::UnknownMachine>>,
    /// The registry, once it runs (its counters for /metrics, its contents for the page).
    pub registry: std::sync::OnceLock<Arc<crate::registry::Registry>>,
    /// The TFTP server's counters, once it runs (for /metrics).
    pub tftp_stats: std::sync::OnceLock<Arc<crate::tftp::Stats>>,
    /// The DHCP server's counters, once it runs (for /metrics).
    pub dhcp_stats: std::sync::OnceLock<Arc<crate::dhcp::Stats>>,
    /// The cluster PKI (None only in tests that serve no configs).
    pub pki: Option<std::sync::RwLock<crate::pki::Pki>>,
    /// Boot assets served over HTTP (`/assets/`, `/ipxe/`) and their counters.
    pub files: Files,
    plan: ArcSwap<Plan>,
    generation: AtomicU64,
    /// Machines with dynamic leases (hostname, address), published by DHCP for DNS.
    dynamic_hosts: ArcSwap<Vec<(String, Ipv4Addr)>>,
    dynamic_version: AtomicU64,
}

/// Settings of the running process that do not come from the description.
/// Default for `--stuck-after`: an install step rarely takes longer than this.
pub const DEFAULT_STUCK_AFTER_SECS: u64 = 30 * 60;

#[derive(Default)]
pub struct AppOptions {
    /// `--stuck-after` in seconds (None: the default).
    pub stuck_after_secs: Option<u64>,
    /// Approved unknown machines, as stored.
    pub approved: Vec<crate::desc::Mac>,
    pub templates_dir: Option<PathBuf>,
    pub admin_token_hash: Option<String>,
    pub pki: Option<crate::pki::Pki>,
    /// Boot assets (`/assets/`, `/ipxe/`): the images directory.
    pub images_dir: PathBuf,
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
        options: AppOptions,
    ) -> Result<Arc<App>, RenderError> {
        let renderer = Renderer::new(options.templates_dir.as_deref())?;
        Ok(Arc::new(App {
            config_path,
            store,
            files: Files::new(options.images_dir),
            templates_dir: options.templates_dir,
            renderer: ArcSwap::from_pointee(renderer),
            admin_token_hash: options.admin_token_hash,
            loop_guard: Default::default(),
            pki: options.pki.map(std::sync::RwLock::new),
            dhcp_stats: std::sync::OnceLock::new(),
            tftp_stats: std::sync::OnceLock::new(),
            registry: std::sync::OnceLock::new(),
            approved: ArcSwap::from_pointee(options.approved.iter().copied().collect()),
            unknown_seen: Default::default(),
            feed: crate::status::feed::channel(),
            stuck_after_millis: options.stuck_after_secs.unwrap_or(DEFAULT_STUCK_AFTER_SECS) * 1000,
            plan: ArcSwap::from_pointee(plan),
            generation: AtomicU64::new(1),
            dynamic_hosts: ArcSwap::from_pointee(Vec::new()),
            dynamic_version: AtomicU64::new(0),
        }))
    }

    pub fn renderer(&self) -> Arc<Renderer> {
        self.renderer.load_full()
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
        if self.templates_dir.is_some() {
            match Renderer::new(self.templates_dir.as_deref()) {
                Ok(r) => self.renderer.store(Arc::new(r)),
                Err(e) => {
                    tracing::error!(error = %e, "templates not reloaded; the previous ones stay in force")
                }
            }
        }
        let old = self.plan();
        let (ob, nb) = (&old.bootstrapper, &new.bootstrapper);
        let mut needs_restart = Vec::new();
        if ob.interface != nb.interface || ob.address != nb.address {
            needs_restart.push("bootstrapper.interface/address");
        }
        if (
            ob.http_port,
            ob.registry_port,
            ob.dns_port,
            ob.tftp_port,
            ob.https_port,
        ) != (
            nb.http_port,
            nb.registry_port,
            nb.dns_port,
            nb.tftp_port,
            nb.https_port,
        ) {
            needs_restart.push("bootstrapper.ports");
        }
        if ob.registry_tls != nb.registry_tls {
            needs_restart.push("registry.tls");
        }
        // Certificates follow the plan (a new control-plane node needs its etcd certificates
        // and a SAN on the apiserver's); CAs never change.
        if let Some(pki) = &self.pki {
            let mut pki = pki.write().unwrap_or_else(|e| e.into_inner());
            match pki.refresh(&new) {
                Ok(issued) => {
                    if let Err(e) = crate::pki::record_issued(self.store.as_ref(), &issued) {
                        tracing::warn!(error = %e, "could not record issued certificates");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificates not refreshed for the new plan")
                }
            }
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
        self.node_step(&mac, hostname, state, detail, true)?;
        Ok(Some(mac))
    }

    /// Records a lifecycle step of the machine `mac` with an event `node.<state>`, in one
    /// transaction. `forward_only` skips the transition (not the event) when the node is
    /// already at or past `state`.
    pub fn node_step(
        &self,
        mac: &str,
        hostname: Option<String>,
        state: NodeState,
        detail: &str,
        forward_only: bool,
    ) -> Result<(), StoreError> {
        let ops = [
            Op::Transition {
                mac: mac.to_string(),
                hostname,
                state,
                detail: Some(detail.to_string()),
                at_millis: crate::store::now_millis(),
                forward_only,
            },
            Op::Event {
                kind: format!("node.{state}"),
                mac: Some(mac.to_string()),
                message: detail.to_string(),
            },
        ];
        for result in self.store.apply(&ops)? {
            result?;
        }
        Ok(())
    }

    /// The machine with this MAC: its planned node, or under the `enroll-worker` policy a
    /// worker made from its dynamic lease. Blocking (reads the store).
    pub fn node_for_mac(
        &self,
        mac: &crate::desc::Mac,
    ) -> Result<Option<crate::plan::NodePlan>, StoreError> {
        let plan = self.plan();
        if let Some(n) = plan.node_by_mac(mac) {
            return Ok(Some(n.clone()));
        }
        if plan.network.unknown_machines != crate::desc::UnknownPolicy::EnrollWorker
            && !self.approved().contains(mac)
        {
            return Ok(None);
        }
        Ok(self
            .store
            .get_lease(&mac.to_string())?
            .map(|l| plan.enrolled_worker(*mac, l.hostname.as_deref(), l.ip)))
    }

    /// The approved MACs (cheap: DHCP reads it per batch).
    pub fn approved(&self) -> Arc<std::collections::HashSet<crate::desc::Mac>> {
        self.approved.load_full()
    }

    /// Approves an unknown machine: persisted with an event, effective for DHCP at once.
    pub fn approve(&self, mac: crate::desc::Mac) -> Result<(), StoreError> {
        self.store.approve_machine(&mac.to_string())?;
        let mut set = (*self.approved()).clone();
        set.insert(mac);
        self.approved.store(Arc::new(set));
        Ok(())
    }

    /// Merges a DHCP thread's view of unknown machines (approved ones drop out).
    pub fn publish_unknown(&self, seen: Vec<crate::dhcp::unknown::UnknownMachine>) {
        let mut map = self.unknown_seen.lock().unwrap_or_else(|e| e.into_inner());
        for m in seen {
            map.insert(m.mac.clone(), m);
        }
        if map.len() > 2 * crate::dhcp::unknown::MAX_TRACKED {
            let mut v: Vec<_> = map.values().map(|m| m.last_seen).collect();
            v.sort_unstable();
            let cut = v[v.len() - crate::dhcp::unknown::MAX_TRACKED];
            map.retain(|_, m| m.last_seen >= cut);
        }
    }

    /// Unknown machines seen by DHCP, newest first, with whether each is approved.
    pub fn unknown_machines(&self) -> Vec<(crate::dhcp::unknown::UnknownMachine, bool)> {
        let approved = self.approved();
        let map = self.unknown_seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .values()
            .map(|m| {
                let ok = m.mac.parse().is_ok_and(|mac| approved.contains(&mac));
                (m.clone(), ok)
            })
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.0.last_seen));
        v
    }
}
