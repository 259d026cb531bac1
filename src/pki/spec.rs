//! What the cluster's certificates must contain, derived from the plan alone (pure): the
//! three CAs and every leaf with its subject, SANs and purpose. Both issuing and checking an
//! existing certificate against the plan read this one list.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::desc::Role;
use crate::plan::Plan;

/// The certificate authorities. Each signs a fixed set of leaves, as kubeadm lays them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CaKind {
    /// `ca.crt`: the cluster CA (API server, kubelets, admin, Slipway's own certificate).
    Cluster,
    /// `etcd/ca.crt`: etcd servers, peers and their clients.
    Etcd,
    /// `front-proxy-ca.crt`: the aggregation layer's client certificate.
    FrontProxy,
}

impl CaKind {
    pub const ALL: [CaKind; 3] = [CaKind::Cluster, CaKind::Etcd, CaKind::FrontProxy];

    /// File stem under the pki directory (Kubernetes' own names).
    pub fn stem(self) -> &'static str {
        match self {
            CaKind::Cluster => "ca",
            CaKind::Etcd => "etcd/ca",
            CaKind::FrontProxy => "front-proxy-ca",
        }
    }

    /// Subject CN, as kubeadm names its CAs.
    pub fn common_name(self) -> &'static str {
        match self {
            CaKind::Cluster => "kubernetes",
            CaKind::Etcd => "etcd-ca",
            CaKind::FrontProxy => "front-proxy-ca",
        }
    }
}

/// What a leaf certificate is for; decides its extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Server,
    Client,
    /// etcd server and peer certificates are used in both directions.
    ServerAndClient,
}

/// A subject alternative name. Ordered so SAN sets compare independent of order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    fn dns(name: &str) -> San {
        San::Dns(name.trim_end_matches('.').to_ascii_lowercase())
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => f.write_str(d),
            San::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One leaf certificate the cluster needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// File stem under the pki directory, also the certificate's name in summaries and
    /// events, e.g. `apiserver` or `etcd/cp1/peer`.
    pub stem: String,
    /// Path of the certificate on a control-plane node, relative to /etc/kubernetes/pki
    /// (`None`: not shipped to nodes).
    pub node_path: Option<&'static str>,
    /// The control-plane node this certificate belongs to (`None`: shared).
    pub node: Option<String>,
    pub issuer: CaKind,
    pub common_name: String,
    pub organization: Option<String>,
    pub sans: BTreeSet<San>,
    pub purpose: Purpose,
}

/// The group of admin.conf's and apiserver-kubelet-client's certificates: since kubeadm
/// 1.29 both use `kubeadm:cluster-admins` (bound to cluster-admin, revocable, unlike the
/// `system:masters` superuser group used before).
pub fn admin_group(kubernetes_version: &str) -> &'static str {
    let mut parts = kubernetes_version.trim_start_matches('v').split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) >= (1, 29) {
        "kubeadm:cluster-admins"
    } else {
        "system:masters"
    }
}

/// The first address of the service range: the `kubernetes` Service's ClusterIP, which
/// in-cluster clients dial and so must be in the API server's certificate.
pub fn first_service_ip(plan: &Plan) -> Ipv4Addr {
    let net = u32::from(plan.cluster.service_cidr.network());
    Ipv4Addr::from(net.wrapping_add(1))
}

/// The API server's SANs: what kubeadm's `GetAPIServerAltNames` requires of an existing
/// certificate (node name, `kubernetes.default.svc.<dnsDomain>`, first service IP,
/// advertise address, controlPlaneEndpoint host), for every control-plane node (one
/// certificate serves all of them), plus the endpoint VIP and localhost. The rendered
/// kubeadm config's `certSANs` is this same set.
pub fn apiserver_sans(plan: &Plan) -> BTreeSet<San> {
    let mut sans: BTreeSet<San> = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "localhost",
    ]
    .into_iter()
    .map(San::dns)
    .collect();
    sans.insert(San::dns(&format!(
        "kubernetes.default.svc.{}",
        plan.cluster.service_dns_domain
    )));
    sans.insert(San::Ip(first_service_ip(plan).into()));
    sans.insert(San::Ip(Ipv4Addr::LOCALHOST.into()));
    for n in plan.nodes.iter().filter(|n| n.role == Role::ControlPlane) {
        sans.insert(San::dns(&n.hostname));
        sans.insert(San::dns(&n.fqdn));
        sans.insert(San::Ip(n.ip.into()));
    }
    let ep = &plan.cluster.endpoint;
    sans.insert(San::dns(&ep.fqdn));
    if let Some(vip) = ep.vip {
        sans.insert(San::Ip(vip.into()));
    }
    sans
}

/// etcd server and peer SANs for one node, as kubeadm builds them.
fn etcd_sans(hostname: &str, ip: Ipv4Addr) -> BTreeSet<San> {
    [
        San::dns(hostname),
        San::dns("localhost"),
        San::Ip(ip.into()),
        San::Ip(Ipv4Addr::LOCALHOST.into()),
        San::Ip(Ipv6Addr::LOCALHOST.into()),
    ]
    .into_iter()
    .collect()
}

/// Slipway's own serving certificate (HTTPS and the registry mirror): nodes reach it by
/// address before DNS works (their hosts.toml names the address), and by name after,
/// including the `registry.<domain>` name DNS serves.
pub fn slipway_sans(plan: &Plan) -> BTreeSet<San> {
    let b = &plan.bootstrapper;
    [
        San::Ip(b.address.into()),
        San::dns(&b.hostname),
        San::dns(&b.fqdn),
        San::dns(&format!("registry.{}", plan.cluster.domain)),
    ]
    .into_iter()
    .collect()
}

fn leaf(
    stem: impl Into<String>,
    node_path: Option<&'static str>,
    issuer: CaKind,
    common_name: impl Into<String>,
    purpose: Purpose,
) -> LeafSpec {
    LeafSpec {
        stem: stem.into(),
        node_path,
        node: None,
        issuer,
        common_name: common_name.into(),
        organization: None,
        sans: BTreeSet::new(),
        purpose,
    }
}

/// Every leaf certificate the plan needs, in a stable order.
pub fn leaf_specs(plan: &Plan) -> Vec<LeafSpec> {
    let mut specs = vec![
        LeafSpec {
            sans: apiserver_sans(plan),
            ..leaf(
                "apiserver",
                Some("apiserver"),
                CaKind::Cluster,
                "kube-apiserver",
                Purpose::Server,
            )
        },
        LeafSpec {
            organization: Some(admin_group(&plan.cluster.kubernetes_version).to_string()),
            ..leaf(
                "apiserver-kubelet-client",
                Some("apiserver-kubelet-client"),
                CaKind::Cluster,
                "kube-apiserver-kubelet-client",
                Purpose::Client,
            )
        },
        leaf(
            "apiserver-etcd-client",
            Some("apiserver-etcd-client"),
            CaKind::Etcd,
            "kube-apiserver-etcd-client",
            Purpose::Client,
        ),
        leaf(
            "front-proxy-client",
            Some("front-proxy-client"),
            CaKind::FrontProxy,
            "front-proxy-client",
            Purpose::Client,
        ),
        LeafSpec {
            organization: Some(admin_group(&plan.cluster.kubernetes_version).to_string()),
            ..leaf(
                "admin",
                None,
                CaKind::Cluster,
                "kubernetes-admin",
                Purpose::Client,
            )
        },
        LeafSpec {
            sans: slipway_sans(plan),
            ..leaf(
                "slipway",
                None,
                CaKind::Cluster,
                plan.bootstrapper.fqdn.clone(),
                Purpose::Server,
            )
        },
    ];
    for n in plan.nodes.iter().filter(|n| n.role == Role::ControlPlane) {
        let h = &n.hostname;
        let node = Some(h.clone());
        specs.push(LeafSpec {
            node: node.clone(),
            sans: etcd_sans(h, n.ip),
            ..leaf(
                format!("etcd/{h}/server"),
                Some("etcd/server"),
                CaKind::Etcd,
                h.clone(),
                Purpose::ServerAndClient,
            )
        });
        specs.push(LeafSpec {
            node: node.clone(),
            sans: etcd_sans(h, n.ip),
            ..leaf(
                format!("etcd/{h}/peer"),
                Some("etcd/peer"),
                CaKind::Etcd,
                h.clone(),
                Purpose::ServerAndClient,
            )
        });
        specs.push(LeafSpec {
            node,
            ..leaf(
                format!("etcd/{h}/healthcheck-client"),
                Some("etcd/healthcheck-client"),
                CaKind::Etcd,
                "kube-etcd-healthcheck-client",
                Purpose::Client,
            )
        });
    }
    specs
}
