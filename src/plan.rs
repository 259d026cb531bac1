//! The immutable plan derived from a valid description: everything the servers need to
//! answer a machine (by MAC, name or IP) without re-deriving it per request. A reload builds
//! a new `Plan` and swaps it in atomically; requests in flight keep the one they started with.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::desc::{
    self, ClusterDesc, DhcpMode, FlannelBackend, Gpu, Mac, OsProfile, Role, UnknownPolicy,
};

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub cluster: ClusterPlan,
    pub bootstrapper: BootstrapperPlan,
    pub network: NetworkPlan,
    pub os: OsPlan,
    pub nodes: Vec<NodePlan>,
    pub registry: RegistryPlan,
    pub images: Vec<String>,
    pub assets: AssetsPlan,
    pub addons: AddonsPlan,
    #[serde(skip)]
    by_mac: HashMap<Mac, usize>,
    #[serde(skip)]
    by_name: HashMap<String, usize>,
    #[serde(skip)]
    by_ip: HashMap<Ipv4Addr, usize>,
}

/// Kubernetes' Service DNS domain inside the cluster, kept apart from the node domain so
/// CoreDNS never shadows the machines' own names.
pub const SERVICE_DNS_DOMAIN: &str = "cluster.local";

#[derive(Debug, Clone, Serialize)]
pub struct ClusterPlan {
    pub name: String,
    pub domain: String,
    pub kubernetes_version: String,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    /// Kubernetes' Service DNS domain ([`SERVICE_DNS_DOMAIN`]): kubeadm's `dnsDomain`, the
    /// kubelet's `clusterDomain` and the API server certificate's
    /// `kubernetes.default.svc.<domain>` all read it here, so they cannot disagree.
    pub service_dns_domain: String,
    pub dns_ip: Ipv4Addr,
    pub flannel_backend: FlannelBackend,
    pub endpoint: EndpointPlan,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointPlan {
    pub fqdn: String,
    pub vip: Option<Ipv4Addr>,
    pub port: u16,
    /// What the endpoint name resolves to: the VIP, or every control-plane node.
    pub addresses: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootstrapperPlan {
    pub interface: String,
    pub address: Ipv4Addr,
    pub hostname: String,
    pub fqdn: String,
    pub http_port: u16,
    pub registry_port: u16,
    pub dns_port: u16,
    pub tftp_port: u16,
    /// Base URL nodes use for boot scripts, configs and assets (an IP: no DNS needed yet).
    pub http_base: String,
    /// Registry address nodes' containerd mirrors point at.
    pub registry_host: String,
    /// The registry speaks HTTPS with Slipway's certificate (`registry.tls`).
    pub registry_tls: bool,
    /// `http://` or `https://` and `registry_host`: the mirror entry in nodes' hosts.toml.
    pub registry_url: String,
    /// The status page and API over HTTPS too, on this port (`bootstrapper.ports.https`).
    pub https_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkPlan {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub upstream_dns: Vec<IpAddr>,
    pub ntp: Vec<String>,
    pub mtu: u16,
    pub dhcp_mode: DhcpMode,
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub lease_time_secs: u32,
    pub unknown_machines: UnknownPolicy,
}

#[derive(Debug, Clone, Serialize)]
pub struct OsPlan {
    pub profile: OsProfile,
    pub version: String,
    pub channel: Option<String>,
    pub kernel_args: Vec<String>,
    pub timezone: String,
    pub ssh_authorized_keys: Vec<String>,
    /// Default install disk (nodes may override theirs).
    pub install_disk: String,
    /// NVIDIA driver branch of GPU nodes (`570`, `570-open`).
    pub nvidia_driver: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub mac: Mac,
    pub hostname: String,
    pub fqdn: String,
    pub ip: Ipv4Addr,
    pub role: Role,
    pub gpu: Gpu,
    /// The control-plane node that runs `kubeadm init`; the others join it.
    pub init: bool,
    pub install_disk: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<String>,
    pub boot: BootUrls,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootUrls {
    pub ipxe_script: String,
    pub config: String,
    pub kernel: String,
    pub initrd: String,
}

/// Where nodes download what they install, from Slipway (air-gapped sites have nothing else).
#[derive(Debug, Clone, Serialize)]
pub struct AssetsPlan {
    /// `flatcar-install -b` base: `<base>/<version>/flatcar_production_image.bin.bz2`.
    pub flatcar_base: String,
    /// Directory URL of kubeadm, kubelet and kubectl for the cluster's version.
    pub kubernetes_bin: String,
    /// NVIDIA container toolkit tarball (its binaries at the top) for GPU nodes.
    pub nvidia_toolkit: String,
    /// Flatcar's prebuilt `flatcar-nvidia-drivers-<branch>.raw` system extension for the
    /// OS version, in the release server's layout; None where Flatcar has none (Ubuntu,
    /// releases before [`NVIDIA_SYSEXT_SINCE`], `current`).
    pub nvidia_drivers_sysext: Option<String>,
    /// The CNI reference plugins release ([`CNI_PLUGINS_VERSION`]) every node unpacks into
    /// /opt/cni/bin, and its tarball's URL.
    pub cni_plugins_version: String,
    pub cni_plugins: String,
    /// Ubuntu's live-server ISO, which the netbooted installer loads into RAM.
    pub ubuntu_iso: String,
    /// The profile's PXE kernel and initrd.
    pub kernel: String,
    pub initrd: String,
}

/// Add-on images, pinned: taken from the description's `images:` list when it names them,
/// else these defaults (which `images:` should then list for an air-gapped site).
#[derive(Debug, Clone, Serialize)]
pub struct AddonsPlan {
    pub flannel: String,
    pub flannel_cni_plugin: String,
    pub nvidia_device_plugin: String,
}

/// containernetworking/plugins release: flannel's CNI configuration delegates to its
/// `bridge`, `host-local`, `portmap` and `loopback` (the `flannel` binary itself comes with
/// flannel's DaemonSet), and neither Flatcar nor Ubuntu's containerd ships them.
pub const CNI_PLUGINS_VERSION: &str = "1.5.1";

/// The first Flatcar release whose release server ships the `nvidia-drivers-*` extensions.
pub const NVIDIA_SYSEXT_SINCE: (u32, u32, u32) = (4344, 0, 0);

/// Whether Flatcar `version` (`MAJOR.MINOR.PATCH`) comes with the NVIDIA driver extensions.
pub fn flatcar_has_nvidia_sysext(version: &str) -> bool {
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    match parts[..] {
        [a, b, c] if version.split('.').count() == 3 => (a, b, c) >= NVIDIA_SYSEXT_SINCE,
        _ => false,
    }
}

pub const DEFAULT_FLANNEL: &str = "ghcr.io/flannel-io/flannel:v0.26.1";
pub const DEFAULT_FLANNEL_CNI: &str = "ghcr.io/flannel-io/flannel-cni-plugin:v1.5.1-flannel2";
pub const DEFAULT_DEVICE_PLUGIN: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.16.2";

/// The first listed image whose repository (reference without tag/digest) ends with `repo`.
fn pinned(images: &[String], repo: &str, default: &str) -> String {
    images
        .iter()
        .find(|i| {
            let name = i.split('@').next().unwrap_or(i);
            let name = match name.rsplit_once(':') {
                Some((n, tag)) if !tag.contains('/') => n,
                _ => name,
            };
            name == repo || name.ends_with(&format!("/{repo}"))
        })
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

#[derive(Debug, Clone, Serialize)]
pub struct RegistryPlan {
    pub upstreams: Vec<UpstreamPlan>,
    pub storage: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamPlan {
    pub name: String,
    pub url: String,
}

fn fqdn(name: &str, domain: &str) -> String {
    if name.contains('.') {
        name.trim_end_matches('.').to_string()
    } else {
        format!("{name}.{domain}")
    }
}

/// Where a Flatcar release lives under `/assets/`: the release server's own layout
/// (`<channel>/amd64-usr/<version>/`), so a mirror is a plain copy and `flatcar-install -b`
/// finds the disk image next to the PXE files.
fn flatcar_base(channel: Option<&str>) -> String {
    format!(
        "assets/os/flatcar/{}/amd64-usr",
        channel.unwrap_or("stable")
    )
}

/// URL paths of the profile's PXE kernel and initrd. `/assets/` serves the images directory
/// (images/README.md); amd64 only for now.
fn boot_assets(profile: OsProfile, channel: Option<&str>, version: &str) -> (String, String) {
    match profile {
        OsProfile::Flatcar => {
            let dir = format!("{}/{version}", flatcar_base(channel));
            (
                format!("{dir}/flatcar_production_pxe.vmlinuz"),
                format!("{dir}/flatcar_production_pxe_image.cpio.gz"),
            )
        }
        OsProfile::Ubuntu => (
            format!("assets/os/ubuntu/{version}/amd64/vmlinuz"),
            format!("assets/os/ubuntu/{version}/amd64/initrd"),
        ),
    }
}

impl Plan {
    /// Derives the plan. The description must have passed validation.
    pub fn from_desc(d: &ClusterDesc) -> Plan {
        let domain = d.cluster.domain.trim_end_matches('.').to_string();
        let b = &d.bootstrapper;
        let http_base = format!("http://{}:{}", *b.address, *b.ports.http);
        let (kernel, initrd) = boot_assets(
            *d.os.profile,
            d.os.channel.as_ref().map(|c| c.value.as_str()),
            &d.os.version,
        );
        let first_cp = d.nodes.iter().position(|n| *n.role == Role::ControlPlane);
        let nodes: Vec<NodePlan> = d
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mac = *n.mac;
                NodePlan {
                    mac,
                    hostname: n.hostname.value.clone(),
                    fqdn: fqdn(&n.hostname, &domain),
                    ip: *n.ip,
                    role: *n.role,
                    gpu: *n.gpu,
                    init: Some(i) == first_cp,
                    install_disk: n
                        .install_disk
                        .as_ref()
                        .unwrap_or(&d.os.install_disk)
                        .value
                        .clone(),
                    labels: n
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.value.clone()))
                        .collect(),
                    taints: n
                        .taints
                        .iter()
                        .map(|t| match &t.value {
                            v @ desc::Taint {
                                value: Some(val), ..
                            } => format!("{}={val}:{}", v.key, v.effect),
                            v => format!("{}:{}", v.key, v.effect),
                        })
                        .collect(),
                    boot: BootUrls {
                        ipxe_script: format!("{http_base}/boot/{}.ipxe", mac.url_form()),
                        config: format!("{http_base}/config/{}", mac.url_form()),
                        kernel: format!("{http_base}/{kernel}"),
                        initrd: format!("{http_base}/{initrd}"),
                    },
                }
            })
            .collect();
        let ep = &d.cluster.control_plane_endpoint;
        let addresses = match &ep.vip {
            Some(vip) => vec![**vip],
            None => nodes
                .iter()
                .filter(|n| n.role == Role::ControlPlane)
                .map(|n| n.ip)
                .collect(),
        };
        let index =
            |key: fn(&NodePlan) -> _| nodes.iter().enumerate().map(|(i, n)| (key(n), i)).collect();
        let by_mac = index(|n| n.mac);
        let by_ip = nodes.iter().enumerate().map(|(i, n)| (n.ip, i)).collect();
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.hostname.clone(), i))
            .collect();
        let net = &d.network;
        Plan {
            cluster: ClusterPlan {
                name: d.cluster.name.value.clone(),
                domain: domain.clone(),
                kubernetes_version: d
                    .cluster
                    .kubernetes_version
                    .trim_start_matches('v')
                    .to_string(),
                pod_cidr: *d.cluster.pod_cidr,
                service_cidr: *d.cluster.service_cidr,
                service_dns_domain: SERVICE_DNS_DOMAIN.to_string(),
                dns_ip: *d.cluster.dns_ip,
                flannel_backend: *d.cluster.flannel_backend,
                endpoint: EndpointPlan {
                    fqdn: fqdn(&ep.name, &domain),
                    vip: ep.vip.as_ref().map(|v| **v),
                    port: *ep.port,
                    addresses,
                },
            },
            bootstrapper: BootstrapperPlan {
                interface: b.interface.value.clone(),
                address: *b.address,
                hostname: b.hostname.value.clone(),
                fqdn: fqdn(&b.hostname, &domain),
                http_port: *b.ports.http,
                registry_port: *b.ports.registry,
                dns_port: *b.ports.dns,
                tftp_port: *b.ports.tftp,
                registry_host: format!("{}:{}", *b.address, *b.ports.registry),
                registry_tls: *d.registry.tls,
                registry_url: format!(
                    "{}://{}:{}",
                    if *d.registry.tls { "https" } else { "http" },
                    *b.address,
                    *b.ports.registry
                ),
                https_port: b.ports.https.as_ref().map(|p| **p),
                http_base: http_base.clone(),
            },
            network: NetworkPlan {
                subnet: *net.subnet,
                gateway: *net.gateway,
                upstream_dns: net.upstream_dns.iter().map(|a| **a).collect(),
                ntp: net.ntp.iter().map(|a| a.value.clone()).collect(),
                mtu: *net.mtu,
                dhcp_mode: *net.dhcp.mode,
                pool: net.dhcp.pool.as_ref().map(|p| (*p.start, *p.end)),
                lease_time_secs: *net.dhcp.lease_time,
                unknown_machines: *net.dhcp.unknown_machines,
            },
            os: OsPlan {
                profile: *d.os.profile,
                version: d.os.version.value.clone(),
                channel: d.os.channel.as_ref().map(|c| c.value.clone()),
                kernel_args: d.os.kernel_args.iter().map(|a| a.value.clone()).collect(),
                timezone: d.os.timezone.value.clone(),
                ssh_authorized_keys: d
                    .os
                    .ssh_authorized_keys
                    .iter()
                    .map(|a| a.value.clone())
                    .collect(),
                install_disk: d.os.install_disk.value.clone(),
                nvidia_driver: d.os.nvidia_driver.value.clone(),
            },
            registry: RegistryPlan {
                upstreams: d
                    .registry
                    .upstreams
                    .iter()
                    .map(|u| UpstreamPlan {
                        name: u.name.value.clone(),
                        url: u.url.value.clone(),
                    })
                    .collect(),
                storage: d.registry.storage.as_ref().map(|s| s.display().to_string()),
            },
            assets: AssetsPlan {
                flatcar_base: format!(
                    "{http_base}/{}",
                    flatcar_base(d.os.channel.as_ref().map(|c| c.value.as_str()))
                ),
                kubernetes_bin: format!(
                    "{http_base}/assets/kubernetes/v{}/amd64",
                    d.cluster.kubernetes_version.trim_start_matches('v')
                ),
                nvidia_toolkit: format!(
                    "{http_base}/assets/nvidia/nvidia-container-toolkit-amd64.tar.gz"
                ),
                nvidia_drivers_sysext: (*d.os.profile == OsProfile::Flatcar
                    && flatcar_has_nvidia_sysext(&d.os.version))
                .then(|| {
                    format!(
                        "{http_base}/{}/{}/flatcar-nvidia-drivers-{}.raw",
                        flatcar_base(d.os.channel.as_ref().map(|c| c.value.as_str())),
                        d.os.version.value,
                        d.os.nvidia_driver.value
                    )
                }),
                cni_plugins_version: CNI_PLUGINS_VERSION.to_string(),
                cni_plugins: format!(
                    "{http_base}/assets/cni/v{v}/cni-plugins-linux-amd64-v{v}.tgz",
                    v = CNI_PLUGINS_VERSION
                ),
                kernel: format!("{http_base}/{kernel}"),
                initrd: format!("{http_base}/{initrd}"),
                ubuntu_iso: format!(
                    "{http_base}/assets/os/ubuntu/{v}/amd64/ubuntu-{v}-live-server-amd64.iso",
                    v = d.os.version.value
                ),
            },
            addons: {
                let images: Vec<String> = d.images.iter().map(|i| i.value.clone()).collect();
                AddonsPlan {
                    flannel: pinned(&images, "flannel-io/flannel", DEFAULT_FLANNEL),
                    flannel_cni_plugin: pinned(
                        &images,
                        "flannel-io/flannel-cni-plugin",
                        DEFAULT_FLANNEL_CNI,
                    ),
                    nvidia_device_plugin: pinned(
                        &images,
                        "nvidia/k8s-device-plugin",
                        DEFAULT_DEVICE_PLUGIN,
                    ),
                }
            },
            images: d.images.iter().map(|i| i.value.clone()).collect(),
            nodes,
            by_mac,
            by_name,
            by_ip,
        }
    }

    pub fn node_by_mac(&self, mac: &Mac) -> Option<&NodePlan> {
        self.by_mac.get(mac).map(|&i| &self.nodes[i])
    }

    pub fn node_by_name(&self, name: &str) -> Option<&NodePlan> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    pub fn node_by_ip(&self, ip: Ipv4Addr) -> Option<&NodePlan> {
        self.by_ip.get(&ip).map(|&i| &self.nodes[i])
    }

    /// A machine that is not in the description but holds a dynamic lease, under the
    /// `enroll-worker` policy: a plain worker with the leased address and the name it asked
    /// for (or one made from its MAC), installed to the default disk.
    pub fn enrolled_worker(&self, mac: Mac, hostname: Option<&str>, ip: Ipv4Addr) -> NodePlan {
        let hostname = hostname
            .filter(|h| desc::types::check_label(h).is_ok())
            .map(str::to_string)
            .unwrap_or_else(|| format!("node-{}", mac.url_form().replace('-', "")));
        let base = &self.bootstrapper.http_base;
        NodePlan {
            mac,
            fqdn: fqdn(&hostname, &self.cluster.domain),
            hostname,
            ip,
            role: Role::Worker,
            gpu: Gpu::None,
            init: false,
            install_disk: self.os.install_disk.clone(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            boot: BootUrls {
                ipxe_script: format!("{base}/boot/{}.ipxe", mac.url_form()),
                config: format!("{base}/config/{}", mac.url_form()),
                kernel: self.assets.kernel.clone(),
                initrd: self.assets.initrd.clone(),
            },
        }
    }

    /// A human-readable table of the nodes, for `slipway plan`.
    pub fn table(&self) -> String {
        let header = [
            "MAC",
            "HOSTNAME",
            "IP",
            "ROLE",
            "GPU",
            "INSTALL DISK",
            "IPXE SCRIPT",
            "CONFIG",
        ];
        let rows: Vec<[String; 8]> = self
            .nodes
            .iter()
            .map(|n| {
                let role = match n.role {
                    Role::ControlPlane if n.init => "control-plane (init)",
                    Role::ControlPlane => "control-plane",
                    Role::Worker => "worker",
                };
                let gpu = match n.gpu {
                    Gpu::None => "-",
                    Gpu::Nvidia => "nvidia",
                };
                [
                    n.mac.to_string(),
                    n.hostname.clone(),
                    n.ip.to_string(),
                    role.to_string(),
                    gpu.to_string(),
                    n.install_disk.clone(),
                    n.boot.ipxe_script.clone(),
                    n.boot.config.clone(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let mut out = String::new();
        let c = &self.cluster;
        let _ = writeln!(
            out,
            "cluster {} ({}), Kubernetes {}, endpoint {}:{} -> {}",
            c.name,
            c.domain,
            c.kubernetes_version,
            c.endpoint.fqdn,
            c.endpoint.port,
            c.endpoint
                .addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "bootstrapper {} on {} ({}), DHCP {:?}, {} nodes\n",
            self.bootstrapper.address,
            self.bootstrapper.interface,
            self.bootstrapper.http_base,
            self.network.dhcp_mode,
            self.nodes.len()
        );
        let line = |cells: &[&str]| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    let _ = write!(l, "{cell:<w$}  ");
                }
            }
            l.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", line(&header));
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            let _ = writeln!(out, "{}", line(&cells));
        }
        out
    }
}
