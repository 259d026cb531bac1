#!/bin/bash
# Slipway: brings {{ node.hostname }} into the cluster once, then reports "joined".
set -uo pipefail
export PATH=/opt/bin:$PATH
report() { /opt/slipway/report.sh "$@" || true; }
[ -f /etc/kubernetes/kubelet.conf ] && exit 0
modprobe overlay; modprobe br_netfilter
sysctl --system >/dev/null
until systemctl is-active --quiet containerd; do sleep 2; done
{% if node.init -%}
if ! kubeadm init --config /etc/slipway/kubeadm.yaml -v=1; then
  report failed "kubeadm init failed (journalctl -u slipway-join)"
  exit 1
fi
export KUBECONFIG=/etc/kubernetes/admin.conf
for m in /etc/slipway/addons/*.yaml; do
  until kubectl apply -f "$m"; do sleep 5; done
done
{%- else -%}
# The first control plane may still be coming up: keep trying for half an hour.
for attempt in $(seq 1 60); do
  kubeadm join --config /etc/slipway/kubeadm.yaml -v=1 && break
  kubeadm reset --force >/dev/null 2>&1 || true
  sleep 30
done
if [ ! -f /etc/kubernetes/kubelet.conf ]; then
  report failed "kubeadm join did not succeed in 30 min (journalctl -u slipway-join)"
  exit 1
fi
{%- endif %}
report joined "kubelet registered as {{ node.hostname }}"
