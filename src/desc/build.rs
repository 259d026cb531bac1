//! Builds the typed `ClusterDesc` from the positioned tree, applying documented defaults.
//! Returns `None` only when a required piece is unusable; every problem is in `cx.diags`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::model::*;
use super::read::{Cx, Seconds, Section, enum_from_yaml};
use super::types::{Pos, check_dns_name, check_label};
use super::yaml::{Node, Value};

enum_from_yaml!(FlannelBackend, "flannel backend", { "vxlan" => FlannelBackend::Vxlan, "host-gw" => FlannelBackend::HostGw });
enum_from_yaml!(DhcpMode, "DHCP mode", { "authoritative" => DhcpMode::Authoritative, "proxy" => DhcpMode::Proxy, "off" => DhcpMode::Off });
enum_from_yaml!(UnknownPolicy, "unknown-machine policy", { "ignore" => UnknownPolicy::Ignore, "enroll-worker" => UnknownPolicy::EnrollWorker });
enum_from_yaml!(OsProfile, "OS profile", { "flatcar" => OsProfile::Flatcar, "ubuntu" => OsProfile::Ubuntu });
enum_from_yaml!(Role, "role", { "control-plane" => Role::ControlPlane, "worker" => Role::Worker });
enum_from_yaml!(Gpu, "GPU kind", { "none" => Gpu::None, "nvidia" => Gpu::Nvidia });

/// Default registries mirrored when the description names none.
pub const DEFAULT_UPSTREAMS: &[&str] = &["docker.io", "registry.k8s.io", "quay.io", "ghcr.io"];

pub fn build(root: &Node, cx: &mut Cx) -> Option<ClusterDesc> {
    let top_pos = Pos {
        line: 1,
        col: 1,
        ..Pos::default()
    };
    let mut top = Section::new(cx, "", top_pos, Some(root));
    let cluster = cluster(&mut top.section(cx, "cluster"), cx);
    let bootstrapper = bootstrapper(&mut top.section(cx, "bootstrapper"), cx);
    let network = network(&mut top.section(cx, "network"), cx);
    let os = os(&mut top.section(cx, "os"), cx);
    let nodes = nodes(&mut top, cx);
    let registry = registry(&mut top.section(cx, "registry"), cx);
    let images = top.list::<String>(cx, "images", "image references");
    top.finish(cx);
    Some(ClusterDesc {
        cluster: cluster?,
        bootstrapper: bootstrapper?,
        network: network?,
        os: os?,
        nodes,
        registry,
        images,
    })
}

/// Wraps a section reader so `finish` (unknown keys) always runs, even when a required key
/// is missing and the section as a whole cannot be built.
fn with<'n, T>(
    s: &mut Section<'n>,
    cx: &mut Cx,
    f: impl FnOnce(&mut Section<'n>, &mut Cx) -> Option<T>,
) -> Option<T> {
    let out = f(s, cx);
    s.finish(cx);
    out
}

fn cluster(s: &mut Section, cx: &mut Cx) -> Option<Cluster> {
    with(s, cx, |s, cx| {
        let name = s.req::<String>(cx, "name");
        if let Some(n) = &name {
            cx.check(n, |v| {
                check_label(v).map_err(|e| e.replacen("hostname", "cluster name", 1))
            });
        }
        let domain = s.req::<String>(cx, "domain");
        if let Some(d) = &domain {
            cx.check(d, |v| check_dns_name(v));
        }
        let kubernetes_version = s.req::<String>(cx, "kubernetes_version");
        if let Some(v) = &kubernetes_version {
            cx.check(v, |v| check_k8s_version(v));
        }
        let pod_cidr = s.or(
            cx,
            "pod_cidr",
            Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("valid"),
        );
        let service_cidr = s.or(
            cx,
            "service_cidr",
            Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).expect("valid"),
        );
        let default_dns = nth_host(&service_cidr, 10).unwrap_or(service_cidr.network());
        let dns_ip = s.or(cx, "dns_ip", default_dns);
        let flannel_backend = s.or(cx, "flannel_backend", FlannelBackend::Vxlan);
        let mut e = s.section(cx, "control_plane_endpoint");
        let control_plane_endpoint = with(&mut e, cx, |e, cx| {
            let name = e.or(cx, "name", "api".to_string());
            cx.check(&name, |v| check_dns_name(v));
            Some(Endpoint {
                name,
                vip: e.opt(cx, "vip"),
                port: e.or(cx, "port", 6443),
            })
        })?;
        Some(Cluster {
            name: name?,
            domain: domain?,
            kubernetes_version: kubernetes_version?,
            pod_cidr,
            service_cidr,
            dns_ip,
            flannel_backend,
            control_plane_endpoint,
        })
    })
}

/// The `n`th address of a network (n = 1 is the first host).
pub fn nth_host(net: &Ipv4Net, n: u32) -> Option<Ipv4Addr> {
    let base = u32::from(net.network());
    let ip = base.checked_add(n)?;
    net.contains(&Ipv4Addr::from(ip))
        .then(|| Ipv4Addr::from(ip))
}

fn check_k8s_version(v: &str) -> Result<(), String> {
    let v2 = v.strip_prefix('v').unwrap_or(v);
    let parts: Vec<&str> = v2.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
    {
        Ok(())
    } else {
        Err(format!(
            "invalid Kubernetes version `{v}`: expected MAJOR.MINOR.PATCH such as 1.31.4"
        ))
    }
}

fn bootstrapper(s: &mut Section, cx: &mut Cx) -> Option<Bootstrapper> {
    with(s, cx, |s, cx| {
        let interface = s.req::<String>(cx, "interface");
        if let Some(i) = &interface {
            cx.check(i, |v| {
                if v.is_empty() || v.len() > 15 || v.contains(['/', ' ']) {
                    Err(format!("invalid interface name `{v}`"))
                } else {
                    Ok(())
                }
            });
        }
        let address = s.req(cx, "address");
        let subnet = s.opt(cx, "subnet");
        let hostname = s.or(cx, "hostname", "slipway".to_string());
        cx.check(&hostname, |v| check_label(v));
        let mut p = s.section(cx, "ports");
        let ports = with(&mut p, cx, |p, cx| {
            Some(Ports {
                http: p.or(cx, "http", 8080),
                registry: p.or(cx, "registry", 5000),
                dns: p.or(cx, "dns", 53),
                tftp: p.or(cx, "tftp", 69),
                https: p.opt(cx, "https"),
            })
        })?;
        Some(Bootstrapper {
            interface: interface?,
            address: address?,
            subnet,
            hostname,
            ports,
        })
    })
}

fn network(s: &mut Section, cx: &mut Cx) -> Option<Network> {
    with(s, cx, |s, cx| {
        let subnet = s.req(cx, "subnet");
        let gateway = s.req(cx, "gateway");
        let upstream_dns = s.list(cx, "upstream_dns", "IP addresses");
        let ntp = s.list::<String>(cx, "ntp", "NTP server names or addresses");
        for n in &ntp {
            cx.check(n, |v| {
                if v.parse::<std::net::IpAddr>().is_ok() {
                    Ok(())
                } else {
                    check_dns_name(v)
                }
            });
        }
        let mtu = s.or(cx, "mtu", 1500u16);
        let mut d = s.section(cx, "dhcp");
        let dhcp = with(&mut d, cx, |d, cx| {
            let mode = d.or(cx, "mode", DhcpMode::Authoritative);
            let pool_pos = d.key_pos("pool");
            let mut p = d.section(cx, "pool");
            let pool = if p.get("start").is_some() || p.get("end").is_some() {
                with(&mut p, cx, |p, cx| {
                    Some(Pool {
                        start: p.req(cx, "start")?,
                        end: p.req(cx, "end")?,
                        pos: pool_pos,
                    })
                })
            } else {
                p.finish(cx);
                None
            };
            let lease_time = d.or(cx, "lease_time", Seconds(3600));
            let unknown_machines = d.or(cx, "unknown_machines", UnknownPolicy::Ignore);
            Some(Dhcp {
                mode,
                pool,
                lease_time: At::new(lease_time.value.0, lease_time.pos),
                unknown_machines,
            })
        })?;
        Some(Network {
            subnet: subnet?,
            gateway: gateway?,
            upstream_dns,
            ntp,
            mtu,
            dhcp,
        })
    })
}

/// The NVIDIA driver branch GPU nodes get unless `os.nvidia_driver` names another.
pub const DEFAULT_NVIDIA_DRIVER: &str = "570";

/// A driver branch as Flatcar's extensions and Ubuntu's packages name it: three digits,
/// optionally `-open` (NVIDIA's open kernel modules).
fn check_nvidia_driver(v: &str) -> Result<(), String> {
    let digits = v.strip_suffix("-open").unwrap_or(v);
    if digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "invalid NVIDIA driver branch `{v}`: expected three digits, optionally with `-open`, such as 570 or 570-open"
        ))
    }
}

fn os(s: &mut Section, cx: &mut Cx) -> Option<Os> {
    with(s, cx, |s, cx| {
        let profile = s.req(cx, "profile");
        let version = s.req(cx, "version");
        let channel = s.opt::<String>(cx, "channel");
        let install_disk = s.or(cx, "install_disk", "/dev/sda".to_string());
        cx.check(&install_disk, |v| check_disk(v));
        let kernel_args = s.list(cx, "kernel_args", "kernel arguments");
        let timezone = s.or(cx, "timezone", "UTC".to_string());
        let nvidia_driver = s.or(cx, "nvidia_driver", DEFAULT_NVIDIA_DRIVER.to_string());
        cx.check(&nvidia_driver, |v| check_nvidia_driver(v));
        let ssh_authorized_keys = s.list::<String>(cx, "ssh_authorized_keys", "SSH public keys");
        for k in &ssh_authorized_keys {
            cx.check(k, |v| {
                let kind = v.split_whitespace().next().unwrap_or("");
                if v.split_whitespace().count() >= 2
                    && (kind.starts_with("ssh-")
                        || kind.starts_with("ecdsa-")
                        || kind.starts_with("sk-"))
                {
                    Ok(())
                } else {
                    Err("invalid SSH public key: expected `<type> <base64> [comment]`".to_string())
                }
            });
        }
        Some(Os {
            profile: profile?,
            version: version?,
            channel,
            install_disk,
            kernel_args,
            timezone,
            ssh_authorized_keys,
            nvidia_driver,
        })
    })
}

fn check_disk(v: &str) -> Result<(), String> {
    if v.starts_with("/dev/") && !v.contains("..") && v.len() > 5 {
        Ok(())
    } else {
        Err(format!(
            "invalid install disk `{v}`: expected a device path under /dev/"
        ))
    }
}

fn nodes(top: &mut Section, cx: &mut Cx) -> Vec<NodeDesc> {
    let Some(list) = top.get("nodes") else {
        cx.diags
            .error(top.pos(), "missing required key `nodes` at the top level");
        return Vec::new();
    };
    let items = match &list.value {
        Value::Seq(items) => items,
        other => {
            cx.diags.error(
                list.pos,
                format!("expected a list of nodes, found {}", other.kind()),
            );
            return Vec::new();
        }
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let mut s = Section::new(cx, format!("nodes[{i}]"), item.pos, Some(item));
            with(&mut s, cx, |s, cx| node(s, cx, item.pos))
        })
        .collect()
}

fn node(s: &mut Section, cx: &mut Cx, pos: Pos) -> Option<NodeDesc> {
    let mac = s.req(cx, "mac");
    let hostname = s.req::<String>(cx, "hostname");
    if let Some(h) = &hostname {
        cx.check(h, |v| check_label(v));
    }
    let ip = s.req(cx, "ip");
    let role = s.req(cx, "role");
    let gpu = s.or(cx, "gpu", Gpu::None);
    let labels = labels(s, cx);
    let taints = s
        .list::<String>(cx, "taints", "taints")
        .into_iter()
        .filter_map(|t| match parse_taint(&t.value) {
            Ok(v) => Some(At::new(v, t.pos)),
            Err(e) => {
                cx.diags.error(t.pos, e);
                None
            }
        })
        .collect();
    let install_disk = s.opt::<String>(cx, "install_disk");
    if let Some(d) = &install_disk {
        cx.check(d, |v| check_disk(v));
    }
    Some(NodeDesc {
        mac: mac?,
        hostname: hostname?,
        ip: ip?,
        role: role?,
        gpu,
        labels,
        taints,
        install_disk,
        pos,
    })
}

fn labels(s: &mut Section, cx: &mut Cx) -> BTreeMap<String, At<String>> {
    let mut out = BTreeMap::new();
    let Some(node) = s.get("labels") else {
        return out;
    };
    let Value::Map(entries) = &node.value else {
        cx.diags.error(
            node.pos,
            format!(
                "expected a mapping of label names to values, found {}",
                node.value.kind()
            ),
        );
        return out;
    };
    for (k, v) in entries {
        if let Err(e) = check_label_key(&k.name) {
            cx.diags.error(k.pos, e);
            continue;
        }
        if let Some(val) = cx.read::<String>(v) {
            cx.check(&val, |v| check_label_value(v));
            out.insert(k.name.clone(), val);
        }
    }
    out
}

/// Kubernetes label key: optional DNS-subdomain prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` or `.`, beginning and ending alphanumeric.
fn check_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        check_dns_name(p)
            .map_err(|_| format!("invalid label key `{k}`: prefix `{p}` is not a DNS subdomain"))?;
    }
    check_label_value(name).map_err(|_| format!("invalid label key `{k}`"))?;
    if name.is_empty() {
        return Err(format!("invalid label key `{k}`: empty name"));
    }
    Ok(())
}

fn check_label_value(v: &str) -> Result<(), String> {
    let ok_chars = v
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    let ok_ends = v.is_empty()
        || (v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric());
    if v.len() <= 63 && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "invalid label value `{v}`: at most 63 of A-Z a-z 0-9 - _ ., beginning and ending alphanumeric"
        ))
    }
}

/// Parses `key[=value]:Effect`.
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let err = || {
        format!("invalid taint `{s}`: expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
    };
    let (kv, effect) = s.rsplit_once(':').ok_or_else(err)?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(err());
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    check_label_key(key).map_err(|_| err())?;
    if let Some(v) = &value {
        check_label_value(v).map_err(|_| err())?;
    }
    Ok(Taint {
        key: key.to_string(),
        value,
        effect: effect.to_string(),
    })
}

fn registry(s: &mut Section, cx: &mut Cx) -> Registry {
    let upstreams_pos = s.key_pos("upstreams");
    let node = s.get("upstreams");
    let mut upstreams = Vec::new();
    match node.map(|n| &n.value) {
        None => {
            for name in DEFAULT_UPSTREAMS {
                upstreams.push(Upstream {
                    name: At::new(name.to_string(), upstreams_pos),
                    url: At::new(default_upstream_url(name), upstreams_pos),
                })
            }
        }
        Some(Value::Seq(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(u) = upstream(item, i, cx) {
                    upstreams.push(u);
                }
            }
        }
        Some(other) => cx.diags.error(
            node.map(|n| n.pos).unwrap_or_default(),
            format!(
                "expected a list of registry upstreams, found {}",
                other.kind()
            ),
        ),
    }
    let storage = s.opt(cx, "storage");
    let tls = s.or(cx, "tls", false);
    s.finish(cx);
    Registry {
        upstreams,
        storage,
        tls,
    }
}

fn upstream(item: &Node, i: usize, cx: &mut Cx) -> Option<Upstream> {
    let (name, url) = if let Value::Map(_) = item.value {
        let mut s = Section::new(cx, format!("registry.upstreams[{i}]"), item.pos, Some(item));
        with(&mut s, cx, |s, cx| {
            let name = s.req::<String>(cx, "name")?;
            let url = s.opt::<String>(cx, "url");
            Some((name, url))
        })?
    } else {
        (cx.read::<String>(item)?, None)
    };
    cx.check(&name, |v| check_dns_name(v.split(':').next().unwrap_or(v)));
    let url = url.unwrap_or_else(|| At::new(default_upstream_url(&name), name.pos));
    cx.check(&url, |v| {
        if (v.starts_with("https://") || v.starts_with("http://")) && v.len() > 8 {
            Ok(())
        } else {
            Err(format!(
                "invalid upstream URL `{v}`: expected http:// or https://"
            ))
        }
    });
    Some(Upstream { name, url })
}

pub fn default_upstream_url(name: &str) -> String {
    match name {
        "docker.io" => "https://registry-1.docker.io".to_string(),
        other => format!("https://{other}"),
    }
}
