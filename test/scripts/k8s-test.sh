#!/usr/bin/env bash
# Runs nodetrust's cluster tests (test/cluster) against a real kube-apiserver:
# builds/caches the Kubernetes binaries first (test/scripts/k8s-build.sh), then
# `go test` with NODETRUST_REAL=1. -count=1: results depend on the binaries,
# which the go test cache cannot see. Extra arguments go to `go test`
# (e.g. -run TestDrift -v). NODETRUST_BIN selects a prebuilt nodetrust binary.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/k8s-build.sh"
cd "$here/.."
NODETRUST_REAL=1 exec go test -count=1 -timeout 15m "$@" ./cluster/...
