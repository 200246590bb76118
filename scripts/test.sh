#!/usr/bin/env bash
# Runs every check CI runs: gofmt, go vet, and all tests with the race detector.
# As root on a fresh Debian/Ubuntu machine it first installs what the tests need
# (the NAT lab needs ip, nft and tc; the relay interop test coturn; the
# signaling cross-language test node and npm; the packaging tests
# systemd-analyze, strace and rpm; the scale-out tests nats-server). Installing here, once, keeps test packages
# that run in parallel from fighting over the dpkg lock. Elsewhere, tests that need those
# skip with a clear message (under CI=true a skip is a failure).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tc >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v turnutils_uclient >/dev/null 2>&1 || need+=(coturn)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v rpm >/dev/null 2>&1 || need+=(rpm)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing test dependencies: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d 101: packages such as coturn must not start their own daemons here.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
    rm -f /usr/sbin/policy-rc.d
  else
    echo "== not root (or no apt-get): not installing ${need[*]}; tests needing them will skip"
  fi
fi

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './node_modules/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change these files (run gofmt -w):"
  echo "$unformatted"
  exit 1
fi

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -count=1 -timeout 25m ./...
