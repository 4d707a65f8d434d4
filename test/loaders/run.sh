#!/bin/sh
# Runs the runtime-loader tests against nodetrust built from the repo root
# (or $NODETRUST_BIN). -count=1: results depend on the binary, which the go
# test cache cannot see, so never reuse a cached pass.
set -eu
cd "$(dirname "$0")/.."
exec go test -count=1 "$@" ./loaders/...
