#!/usr/bin/env bash
# The end-to-end story on one real node (`make e2e`): installs the Debian
# packages (test/scripts/deps.sh), builds or reuses the cached Kubernetes
# binaries (test/scripts/k8s-build.sh) and containerd 2
# (test/scripts/containerd2-build.sh, for TestLayoutPulls), then runs the Go
# tests as root.
#
# Env: NODETRUST_BIN       nodetrust binary under test (default: built from the repo)
#      NODETRUST_E2E_REPORT where the report goes
#                          (default: $NODETRUST_CACHE/e2e/report.txt)
#      NODETRUST_LAYOUT_REPORT where TestLayoutPulls' report goes
#                          (default: $NODETRUST_CACHE/e2e/layout-report.txt)
#      NODETRUST_CACHE     cache directory (default: ~/.cache/nodetrust)
# Extra arguments go to `go test` (e.g. -run TestNodeStory).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export NODETRUST_CACHE="${NODETRUST_CACHE:-$HOME/.cache/nodetrust}"
export NODETRUST_E2E_REPORT="${NODETRUST_E2E_REPORT:-$NODETRUST_CACHE/e2e/report.txt}"
export NODETRUST_LAYOUT_REPORT="${NODETRUST_LAYOUT_REPORT:-$NODETRUST_CACHE/e2e/layout-report.txt}"

if [[ $(id -u) -ne 0 ]]; then
	echo "test/e2e/run.sh: must run as root (unshare -m, mount --bind, chroot)" >&2
	exit 1
fi

start=$(date +%s)
"$repo/test/scripts/deps.sh"
NODETRUST_SKIP_DEPS=1 "$repo/test/scripts/k8s-build.sh"
"$repo/test/scripts/containerd2-build.sh"
NODETRUST_CONTAINERD2="$("$repo/test/scripts/containerd2-build.sh" --print-bin)"
export NODETRUST_CONTAINERD2

cd "$repo/test"
# -count=1: the result depends on binaries the go test cache cannot see.
rc=0
NODETRUST_REAL=1 go test -count=1 -v -timeout 30m "$@" ./e2e/... || rc=$?
echo "test/e2e/run.sh: exit $rc after $(($(date +%s) - start)) s; report: $NODETRUST_E2E_REPORT" >&2
exit "$rc"
