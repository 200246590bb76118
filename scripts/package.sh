#!/usr/bin/env bash
# Builds static rendezvous binaries (CGO_ENABLED=0) and .deb/.rpm packages with
# nfpm (a Go tool dependency: `go tool nfpm`, nothing to install).
#
#   scripts/package.sh                          # linux/amd64 + linux/arm64, deb + rpm, into dist/
#   ARCHES=amd64 FORMATS=deb scripts/package.sh # just one
#
# Environment: ARCHES, FORMATS, DIST (output directory, default dist),
# VERSION (default: the latest v* tag, else 0.0.0-dev).
# Output: $DIST/linux-$ARCH/rendezvous and $DIST/rendezvous_${VERSION}_$ARCH.deb etc.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCHES=${ARCHES:-"amd64 arm64"}
FORMATS=${FORMATS:-"deb rpm"}
DIST=${DIST:-dist}
if [ -z "${VERSION:-}" ]; then
  VERSION=$(git describe --tags --match 'v[0-9]*' 2>/dev/null | sed 's/^v//' || true)
  VERSION=${VERSION:-0.0.0-dev}
fi
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
pkg=github.com/rendezvous-p2p/rendezvous/internal/buildinfo

mkdir -p "$DIST"
# Build nfpm once, not once per package.
go build -o "$DIST/.nfpm" github.com/goreleaser/nfpm/v2/cmd/nfpm

for arch in $ARCHES; do
  bin="$DIST/linux-$arch/rendezvous"
  echo "== rendezvous $VERSION linux/$arch (static)"
  CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath \
    -ldflags "-s -w -X $pkg.Version=$VERSION -X $pkg.Revision=$REVISION" \
    -o "$bin" ./cmd/rendezvous
  for format in $FORMATS; do
    GOARCH="$arch" VERSION="$VERSION" BINARY="$bin" \
      "$DIST/.nfpm" package --config packaging/nfpm.yaml --packager "$format" --target "$DIST/"
  done
done
rm -f "$DIST/.nfpm"
ls -l "$DIST"
