#!/bin/sh
# After install and upgrade (deb: "configure"; rpm: 1 or 2): create the system
# user and its directories, tell systemd about the unit, and restart the
# service if it is running (an upgrade picks up the new binary). The service
# is not enabled here: edit /etc/rendezvous/rendezvous.yaml, then
#   systemctl enable --now rendezvous
set -e
# DPKG_ROOT: dpkg --root=DIR --force-script-chrootless installs into DIR
# (images, tests) and runs this script outside it; act on DIR, not this host.
root=${DPKG_ROOT:-}

case "$1" in
  configure|1|2|"") ;;
  *) exit 0 ;;
esac

if command -v systemd-sysusers >/dev/null 2>&1; then
  systemd-sysusers ${root:+--root="$root"} rendezvous.conf
elif [ -z "$root" ] && ! getent passwd rendezvous >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/rendezvous --no-create-home \
    --shell /usr/sbin/nologin --comment "rendezvous signaling and TURN relay" rendezvous
fi

if command -v systemd-tmpfiles >/dev/null 2>&1; then
  systemd-tmpfiles ${root:+--root="$root"} --create rendezvous.conf
elif [ -z "$root" ]; then
  install -d -m 0700 -o rendezvous -g rendezvous /var/lib/rendezvous
  install -d -m 0750 -o root -g rendezvous /etc/rendezvous /etc/rendezvous/tls
  chown root:rendezvous /etc/rendezvous/rendezvous.yaml
  chmod 0640 /etc/rendezvous/rendezvous.yaml
fi

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  systemctl try-restart rendezvous.service >/dev/null 2>&1 || true
fi
exit 0
