# shellcheck shell=bash
# Functions the scripts of test/scripts share. Source it, do not run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# log MSG...          prints "SCRIPT: MSG" on stderr (SCRIPT: the caller's name)
# die MSG...          logs "error: MSG" and exits 1
# timed NAME CMD...   runs CMD and logs "NAME: N s"
# go_build_env        the Go environment of the builds: -p=2 (2 cores: keep
#                     parallelism and peak memory modest), no VCS stamping,
#                     the local toolchain, static binaries
# build_lock FILE     takes an exclusive lock on FILE (fd 9) for the rest of
#                     the script, saying so when another run holds it
# tool_module ...     a throwaway module that builds one command (below)
# NODETRUST_CACHE     defaults to ~/.cache/nodetrust; CACHE is the same

NODETRUST_CACHE="${NODETRUST_CACHE:-$HOME/.cache/nodetrust}"
CACHE="$NODETRUST_CACHE"

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

die() {
	log "error: $*"
	exit 1
}

timed() { # name cmd...
	local name=$1 t0
	shift
	t0=$(date +%s)
	"$@"
	log "$name: $(($(date +%s) - t0)) s"
}

go_build_env() {
	export GOFLAGS="${GOFLAGS:-} -p=2 -buildvcs=false"
	export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
	export CGO_ENABLED=0
}

build_lock() { # file
	exec 9>"$1"
	if ! flock -n 9; then
		log "another $(basename "$0") holds $1; waiting"
		flock 9
	fi
}

# tool_module DIR NAME MODULE VERSION CMD LABEL
# prepares DIR as a throwaway module nodetrust.test/NAME requiring MODULE at
# VERSION, with a tools.go importing the command package CMD, and tidies it
# (logged as "go mod tidy (LABEL VERSION)"); skipped once DIR/.tidy-ok exists.
tool_module() {
	local dir=$1 name=$2 mod=$3 version=$4 cmd=$5 label=$6
	[[ ! -f "$dir/.tidy-ok" ]] || return 0
	log "preparing throwaway module in $dir for $mod $version"
	printf 'module nodetrust.test/%s\n\ngo 1.24.0\n\nrequire %s %s\n' "$name" "$mod" "$version" >"$dir/go.mod"
	printf '//go:build tools\n\npackage %s\n\nimport _ "%s"\n' "$name" "$cmd" >"$dir/tools.go"
	rm -f "$dir/go.sum"
	(cd "$dir" && timed "go mod tidy ($label $version)" go mod tidy)
	touch "$dir/.tidy-ok"
}
