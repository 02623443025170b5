#!/bin/sh
# Render one overlay of deploy/kubernetes with kustomize, installing kustomize first when
# it is missing (from the Go module proxy, into .stack/bin; needs Go >= 1.24).
#   deploy/kubernetes/render.sh production > manifests.yaml
#   deploy/kubernetes/render.sh --install-only
set -eu
KUSTOMIZE_VERSION=v5.7.1
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN="$REPO/.stack/bin"
KUSTOMIZE="$BIN/kustomize"

if ! "$KUSTOMIZE" version 2>/dev/null | grep -q "$KUSTOMIZE_VERSION"; then
    echo "installing kustomize $KUSTOMIZE_VERSION into $BIN" >&2
    mkdir -p "$BIN"
    GOBIN="$BIN" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2
fi
[ "${1:-}" = "--install-only" ] && exit 0
exec "$KUSTOMIZE" build "$REPO/deploy/kubernetes/overlays/${1:?usage: render.sh OVERLAY}"
