#!/bin/sh
# After removal. On purge (deb) the state directory goes too: it holds the
# generated secrets and ACME certificates. The rendezvous user stays (files it
# owned elsewhere would otherwise end up owned by a recycled uid).
set -e
root=${DPKG_ROOT:-}  # dpkg --root: act on that tree, not this host
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
  rm -rf "$root/var/lib/rendezvous" "$root/etc/rendezvous/tls"
fi
exit 0
