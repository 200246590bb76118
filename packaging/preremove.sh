#!/bin/sh
# Before removal (deb: "remove"; rpm: 0, not on upgrade): stop and disable the service.
set -e
root=${DPKG_ROOT:-}  # dpkg --root: act on that tree, not this host
case "$1" in
  remove|0) ;;
  *) exit 0 ;;
esac
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl stop rendezvous.service >/dev/null 2>&1 || true
fi
if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1; then
  systemctl --no-reload disable rendezvous.service >/dev/null 2>&1 || true
fi
exit 0
