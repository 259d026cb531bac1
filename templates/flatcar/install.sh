#!/bin/bash
# Slipway: installs Flatcar {{ os.version }} on {{ node.install_disk }} of {{ node.hostname }}
# from the cluster's mirror, then reboots into it (the installed system joins the cluster).
set -uo pipefail
report() { /opt/slipway/report.sh "$@" || true; }
report installing "writing Flatcar {{ os.version }} to {{ node.install_disk }}"
if ! flatcar-install -d {{ node.install_disk }} -b {{ assets.flatcar_base }} -V {{ os.version }} \
    -i /opt/slipway/node.ign; then
  report failed "flatcar-install to {{ node.install_disk }} failed (journalctl -u slipway-install)"
  exit 1
fi
report installed "Flatcar {{ os.version }} on {{ node.install_disk }}"
systemctl reboot
