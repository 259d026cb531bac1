//! The typed cluster description. Every value an operator wrote keeps its source position
//! (`At<T>`) so that semantic checks can point at the exact line and column.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::types::{Mac, Pos};

/// A value together with where it was written. Defaults that were not written carry
/// `Pos::default()` (line 0); checks report against a written value where there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct At<T> {
    pub value: T,
    #[serde(skip)]
    pub pos: Pos,
}

impl<T> At<T> {
    pub fn new(value: T, pos: Pos) -> Self {
        Self { value, pos }
    }
}

impl<T> std::ops::Deref for At<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterDesc {
    pub cluster: Cluster,
    pub bootstrapper: Bootstrapper,
    pub network: Network,
    pub os: Os,
    pub nodes: Vec<NodeDesc>,
    pub registry: Registry,
    /// Pinned image references the cluster needs (mirrored and preloaded).
    pub images: Vec<At<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: At<String>,
    pub domain: At<String>,
    pub kubernetes_version: At<String>,
    pub pod_cidr: At<Ipv4Net>,
    pub service_cidr: At<Ipv4Net>,
    pub dns_ip: At<Ipv4Addr>,
    pub flannel_backend: At<FlannelBackend>,
    pub control_plane_endpoint: Endpoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlannelBackend {
    Vxlan,
    HostGw,
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// DNS name of the API endpoint, served by Slipway's DNS (short or fully qualified).
    pub name: At<String>,
    /// Virtual IP of the endpoint; without one the name resolves to every control-plane node.
    pub vip: Option<At<Ipv4Addr>>,
    pub port: At<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bootstrapper {
    pub interface: At<String>,
    pub address: At<Ipv4Addr>,
    /// Slipway's own subnet when it is not the node subnet: the nodes reach it through
    /// `network.gateway`, their DHCP requests through a relay agent. Explicit, so that an
    /// address mistyped outside the node subnet is still an error.
    pub subnet: Option<At<Ipv4Net>>,
    pub hostname: At<String>,
    pub ports: Ports,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ports {
    pub http: At<u16>,
    pub registry: At<u16>,
    pub dns: At<u16>,
    pub tftp: At<u16>,
    /// The status page and API also over HTTPS (Slipway's certificate) on this port.
    pub https: Option<At<u16>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub subnet: At<Ipv4Net>,
    pub gateway: At<Ipv4Addr>,
    pub upstream_dns: Vec<At<IpAddr>>,
    pub ntp: Vec<At<String>>,
    pub mtu: At<u16>,
    pub dhcp: Dhcp,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dhcp {
    pub mode: At<DhcpMode>,
    pub pool: Option<Pool>,
    /// Lease time in seconds.
    pub lease_time: At<u32>,
    pub unknown_machines: At<UnknownPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DhcpMode {
    Authoritative,
    Proxy,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownPolicy {
    Ignore,
    EnrollWorker,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    pub start: At<Ipv4Addr>,
    pub end: At<Ipv4Addr>,
    #[serde(skip)]
    pub pos: Pos,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        *self.start <= ip && ip <= *self.end
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Os {
    pub profile: At<OsProfile>,
    /// Release version (ubuntu "24.04", flatcar "4081.2.0" or "current").
    pub version: At<String>,
    /// Release channel (flatcar: stable, beta, alpha, lts); unused by ubuntu.
    pub channel: Option<At<String>>,
    pub install_disk: At<String>,
    pub kernel_args: Vec<At<String>>,
    pub timezone: At<String>,
    pub ssh_authorized_keys: Vec<At<String>>,
    /// NVIDIA driver branch for GPU nodes (`570`, or `570-open` for the open kernel
    /// modules): Flatcar's `nvidia-drivers-<branch>` extension, Ubuntu's `-server` packages.
    pub nvidia_driver: At<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OsProfile {
    Flatcar,
    Ubuntu,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeDesc {
    pub mac: At<Mac>,
    pub hostname: At<String>,
    pub ip: At<Ipv4Addr>,
    pub role: At<Role>,
    pub gpu: At<Gpu>,
    pub labels: BTreeMap<String, At<String>>,
    pub taints: Vec<At<Taint>>,
    pub install_disk: Option<At<String>>,
    /// Where the node's entry starts (for errors about the node as a whole).
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gpu {
    None,
    Nvidia,
}

/// A Kubernetes taint `key[=value]:Effect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Registry {
    pub upstreams: Vec<Upstream>,
    /// Blob storage directory; defaults to `<state-dir>/registry`.
    pub storage: Option<At<PathBuf>>,
    /// Serve the registry over HTTPS with Slipway's certificate (nodes trust the cluster CA).
    pub tls: At<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    /// The registry host name images are known by (`docker.io`, `registry.k8s.io`, ...).
    pub name: At<String>,
    /// Where to fetch from; defaults to `https://<name>` (docker.io: registry-1.docker.io).
    pub url: At<String>,
}
