#!/usr/bin/env bash
# Build containerd 2.x from Go modules through the module proxy (nothing is
# downloaded as a binary), for the layout tests that pull through containerd
# 2's CRI (test/e2e TestLayoutPulls): a throwaway module outside the repo
# requiring github.com/containerd/containerd/v2 and a tools.go importing its
# cmd/containerd, built static with CGO_ENABLED=0 and the tags
# no_btrfs no_devmapper no_zfs (/work/shared/REAL-COMPONENTS.md).
#
# Only the daemon is built. Image pulls through CRI need no runc and no shim:
# those run containers, which the layout tests never do. The CRI plugin
# starts without them (runc is only looked up when a sandbox is created).
#
# The binary is cached outside the repo, keyed by version:
#   $NODETRUST_CACHE/containerd/<version>/bin/containerd
# (NODETRUST_CACHE defaults to ~/.cache/nodetrust). Idempotent (skips what
# exists), atomic (temp name then mv), safe to run concurrently (flock).
#
# Usage: test/scripts/containerd2-build.sh [--print-bin]
# Env:   CONTAINERD2_VERSION (default below)
#
# Measured on 2 shared cores: see test/e2e/README.md (layouts).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION="${CONTAINERD2_VERSION:-v2.2.4}"
DIR="$CACHE/containerd/$VERSION"
BIN="$DIR/bin/containerd"

case "${1:-}" in
--print-bin)
	echo "$BIN"
	exit 0
	;;
"") ;;
*)
	echo "usage: $0 [--print-bin]" >&2
	exit 2
	;;
esac

if [[ -x "$BIN" ]]; then
	log "cached: $BIN"
	exit 0
fi

go_build_env

mkdir -p "$DIR/bin"
build_lock "$CACHE/containerd/.build.lock"
if [[ -x "$BIN" ]]; then
	log "built concurrently by another run: $BIN"
	exit 0
fi

t_all=$(date +%s)

src="$DIR/src"
mkdir -p "$src"
tool_module "$src" containerd2build github.com/containerd/containerd/v2 "$VERSION" \
	github.com/containerd/containerd/v2/cmd/containerd containerd

# containerd's Makefile sets these; `containerd --version` and the CRI
# Version call report them.
pkg=github.com/containerd/containerd/v2/version
ldflags="-s -w -X $pkg.Version=$VERSION -X $pkg.Revision=gomod -X $pkg.Package=github.com/containerd/containerd/v2"
tmp="$DIR/bin/.containerd.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$src" && timed "build containerd $VERSION" go build -tags "tools no_btrfs no_devmapper no_zfs" -trimpath \
	-ldflags "$ldflags" -o "$tmp" github.com/containerd/containerd/v2/cmd/containerd)
"$tmp" --version >&2
mv -f "$tmp" "$BIN"
log "done in $(($(date +%s) - t_all)) s: $BIN"
