//! Semantic checks across the whole description: uniqueness, address plans, ranges, quorum.
//! Each error points at the value that breaks the rule (for duplicates: the second use).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::diag::Diagnostics;
use super::model::*;
use super::types::Pos;

pub fn validate(d: &ClusterDesc, nodes_pos: Pos, diags: &mut Diagnostics) {
    addresses(d, diags);
    ranges(d, diags);
    nodes(d, nodes_pos, diags);
    misc(d, diags);
}

/// Addresses that belong to the node subnet and must not collide.
fn addresses(d: &ClusterDesc, diags: &mut Diagnostics) {
    let subnet = *d.network.subnet;
    let inside = |ip: &At<Ipv4Addr>, what: &str, diags: &mut Diagnostics| {
        if !subnet.contains(&ip.value) {
            diags.error(
                ip.pos,
                format!("{what} {} is outside the subnet {subnet}", ip.value),
            );
        } else {
            host_address(subnet, ip, what, diags);
        }
    };
    inside(&d.network.gateway, "gateway", diags);
    bootstrapper(d, diags);
    if let Some(vip) = &d.cluster.control_plane_endpoint.vip {
        inside(vip, "control-plane VIP", diags);
    }
    if let Some(pool) = &d.network.dhcp.pool {
        inside(&pool.start, "dynamic pool start", diags);
        inside(&pool.end, "dynamic pool end", diags);
        if *pool.start > *pool.end {
            diags.error(
                pool.end.pos,
                format!(
                    "dynamic pool end {} is before its start {}",
                    *pool.end, *pool.start
                ),
            );
        }
        for (ip, what) in [
            (&d.network.gateway, "gateway"),
            (&d.bootstrapper.address, "bootstrapper address"),
        ] {
            if pool.contains(ip.value) {
                diags.error(
                    ip.pos,
                    format!("{what} {} is inside the dynamic pool", ip.value),
                );
            }
        }
    }

    // Infrastructure addresses first, so that a node colliding with them is the one reported.
    let mut used: HashMap<Ipv4Addr, (String, Pos)> = HashMap::new();
    let mut claim = |ip: &At<Ipv4Addr>, owner: String, diags: &mut Diagnostics| {
        if let Some((first, at)) = used.get(&ip.value) {
            diags.error_with_note(
                ip.pos,
                format!(
                    "duplicate IP address {} (already used by {first})",
                    ip.value
                ),
                format!("{first} has it at line {}", at.line),
            );
        } else {
            used.insert(ip.value, (owner, ip.pos));
        }
    };
    claim(&d.network.gateway, "the gateway".into(), diags);
    claim(&d.bootstrapper.address, "the bootstrapper".into(), diags);
    if let Some(vip) = &d.cluster.control_plane_endpoint.vip {
        claim(vip, "the control-plane VIP".into(), diags);
    }
    for n in &d.nodes {
        inside(&n.ip, &format!("node {} IP", *n.hostname), diags);
        if let Some(pool) = &d.network.dhcp.pool
            && pool.contains(n.ip.value)
        {
            diags.error(
                n.ip.pos,
                format!(
                    "node {} IP {} is inside the dynamic pool {}-{}",
                    *n.hostname, *n.ip, *pool.start, *pool.end
                ),
            );
        }
        claim(&n.ip, format!("node {}", *n.hostname), diags);
    }
}

/// The bootstrapper address lies in the node subnet, or, when Slipway sits behind a router
/// (nodes relayed to it), in the `bootstrapper.subnet` the operator declared, which must be
/// another network: a mistyped address is an error either way.
fn bootstrapper(d: &ClusterDesc, diags: &mut Diagnostics) {
    let (addr, nodes) = (&d.bootstrapper.address, *d.network.subnet);
    let Some(own) = &d.bootstrapper.subnet else {
        if !nodes.contains(&addr.value) {
            diags.error_with_note(
                addr.pos,
                format!(
                    "bootstrapper address {} is outside the subnet {nodes}",
                    **addr
                ),
                "if Slipway reaches the nodes through a router and a DHCP relay, set bootstrapper.subnet to its own subnet",
            );
        } else {
            host_address(nodes, addr, "bootstrapper address", diags);
        }
        return;
    };
    if overlap(own, &nodes) {
        diags.error(
            own.pos,
            format!("bootstrapper subnet {} overlaps the node subnet {nodes}: leave bootstrapper.subnet out when Slipway is on the node subnet", **own),
        );
    } else if !own.contains(&addr.value) {
        diags.error(
            addr.pos,
            format!(
                "bootstrapper address {} is outside the subnet {} (bootstrapper.subnet)",
                **addr, **own
            ),
        );
    } else {
        host_address(**own, addr, "bootstrapper address", diags);
    }
    for (net, what) in [
        (&d.cluster.pod_cidr, "pod CIDR"),
        (&d.cluster.service_cidr, "service CIDR"),
    ] {
        if overlap(own, net) {
            diags.error(
                own.pos,
                format!(
                    "bootstrapper subnet {} overlaps the {what} {}",
                    **own, **net
                ),
            );
        }
    }
}

/// An address usable by a host in `net`: not its network or broadcast address.
fn host_address(net: Ipv4Net, ip: &At<Ipv4Addr>, what: &str, diags: &mut Diagnostics) {
    if ip.value == net.network() || (net.prefix_len() < 31 && ip.value == net.broadcast()) {
        diags.error(
            ip.pos,
            format!(
                "{what} {} is the network or broadcast address of {net}",
                ip.value
            ),
        );
    }
}

fn overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Pod, service and node ranges must be disjoint, and the cluster DNS IP a service IP.
fn ranges(d: &ClusterDesc, diags: &mut Diagnostics) {
    let (pod, svc, subnet) = (
        &d.cluster.pod_cidr,
        &d.cluster.service_cidr,
        &d.network.subnet,
    );
    // Report at the one the operator wrote (defaults have no position).
    let at = |a: &At<Ipv4Net>, b: &At<Ipv4Net>| if a.pos.line > 0 { a.pos } else { b.pos };
    if overlap(pod, subnet) {
        diags.error(
            at(pod, subnet),
            format!("pod CIDR {} overlaps the node subnet {}", **pod, **subnet),
        );
    }
    if overlap(svc, subnet) {
        diags.error(
            at(svc, subnet),
            format!(
                "service CIDR {} overlaps the node subnet {}",
                **svc, **subnet
            ),
        );
    }
    if overlap(pod, svc) {
        diags.error(
            at(svc, pod),
            format!("service CIDR {} overlaps the pod CIDR {}", **svc, **pod),
        );
    }
    let dns = &d.cluster.dns_ip;
    if !svc.contains(&dns.value) {
        diags.error(
            dns.pos,
            format!(
                "cluster DNS IP {} is outside the service CIDR {}",
                **dns, **svc
            ),
        );
    } else if dns.value == svc.network()
        || dns.value == svc.broadcast()
        || Some(dns.value) == super::build::nth_host(svc, 1)
    {
        diags.error(
            dns.pos,
            format!("cluster DNS IP {} must be a usable service IP other than the first (the API service)", **dns),
        );
    }
}

fn nodes(d: &ClusterDesc, nodes_pos: Pos, diags: &mut Diagnostics) {
    let mut macs: HashMap<_, &NodeDesc> = HashMap::new();
    let mut names: HashMap<&str, &NodeDesc> = HashMap::new();
    for n in &d.nodes {
        if let Some(first) = macs.get(&n.mac.value) {
            diags.error_with_note(
                n.mac.pos,
                format!("duplicate MAC address {}", *n.mac),
                format!(
                    "first used by node {} at line {}",
                    *first.hostname, first.mac.pos.line
                ),
            );
        } else {
            macs.insert(n.mac.value, n);
        }
        if let Some(first) = names.get(n.hostname.as_str()) {
            diags.error_with_note(
                n.hostname.pos,
                format!("duplicate hostname {}", *n.hostname),
                format!("first used at line {}", first.hostname.pos.line),
            );
        } else {
            names.insert(&n.hostname, n);
        }
        if *n.hostname == *d.bootstrapper.hostname {
            diags.error(
                n.hostname.pos,
                format!(
                    "duplicate hostname {}: it is the bootstrapper's name",
                    *n.hostname
                ),
            );
        }
    }
    if d.nodes.is_empty() && nodes_pos.line == 0 {
        return; // reported as a missing key already
    }
    let cps = d
        .nodes
        .iter()
        .filter(|n| *n.role == Role::ControlPlane)
        .count();
    if cps == 0 {
        diags.error(
            nodes_pos,
            "no control-plane node: at least one node needs `role: control-plane`",
        );
    } else if cps > 1 && cps % 2 == 0 {
        diags.error(
            nodes_pos,
            format!("even number of control-plane nodes ({cps}): etcd needs an odd number (1, 3, 5) for a quorum that tolerates failures"),
        );
    }
}

fn misc(d: &ClusterDesc, diags: &mut Diagnostics) {
    let mtu = &d.network.mtu;
    if !(576..=9216).contains(&mtu.value) {
        diags.error(
            mtu.pos,
            format!("MTU {} is out of range: expected 576 to 9216", **mtu),
        );
    }
    let lt = &d.network.dhcp.lease_time;
    if lt.value < 60 {
        diags.error(
            lt.pos,
            format!("lease time {}s is too short: at least 60 seconds", **lt),
        );
    }
    let p = &d.bootstrapper.ports;
    let mut ports = vec![
        (&p.http, "http"),
        (&p.registry, "registry"),
        (&p.dns, "dns"),
        (&p.tftp, "tftp"),
    ];
    if let Some(https) = &p.https {
        ports.push((https, "https"));
    }
    for (i, (a, an)) in ports.iter().enumerate() {
        if a.value == 0 {
            diags.error(a.pos, format!("port {an} must not be 0"));
        }
        // http and registry are TCP; dns is TCP+UDP; tftp is UDP: any TCP pair must differ.
        for (b, bn) in &ports[i + 1..] {
            let tcp = |n: &str| n != "tftp";
            if a.value == b.value && tcp(an) && tcp(bn) {
                let at = if b.pos.line > 0 { b.pos } else { a.pos };
                diags.error(at, format!("port {} of {bn} clashes with {an}", b.value));
            }
        }
    }
    let upstreams: Vec<&str> = d
        .registry
        .upstreams
        .iter()
        .map(|u| u.name.as_str())
        .collect();
    for img in &d.images {
        match image_registry(img) {
            Ok(reg) if !upstreams.contains(&reg) => diags.error(
                img.pos,
                format!("image {} comes from {reg}, which is not in registry.upstreams: it could not be mirrored", **img),
            ),
            Ok(_) => {}
            Err(e) => diags.error(img.pos, e),
        }
    }
}

/// The registry host of an image reference (`docker.io` for names without one).
pub fn image_registry(reference: &str) -> Result<&str, String> {
    let bad = || {
        format!(
            "invalid image reference `{reference}`: expected [registry/]repository[:tag][@sha256:digest]"
        )
    };
    if reference.is_empty() || reference.contains(char::is_whitespace) || reference.starts_with('/')
    {
        return Err(bad());
    }
    let (name, _digest) = match reference.split_once('@') {
        Some((n, dg)) => {
            let hex = dg.strip_prefix("sha256:").ok_or_else(bad)?;
            if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            (n, Some(dg))
        }
        None => (reference, None),
    };
    let first = name.split('/').next().unwrap_or("");
    let has_host =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if name.split('/').any(str::is_empty) {
        return Err(bad());
    }
    Ok(if has_host { first } else { "docker.io" })
}

#[cfg(test)]
mod tests {
    use super::image_registry;

    #[test]
    fn image_registries() {
        assert_eq!(image_registry("nginx:1.27").unwrap(), "docker.io");
        assert_eq!(image_registry("library/nginx").unwrap(), "docker.io");
        assert_eq!(
            image_registry("registry.k8s.io/pause:3.10").unwrap(),
            "registry.k8s.io"
        );
        assert_eq!(
            image_registry("localhost:5000/a/b:c").unwrap(),
            "localhost:5000"
        );
        assert!(image_registry("a//b").is_err());
        assert!(image_registry("x@sha256:12").is_err());
    }
}
