#!/usr/bin/env bash
# Build the Kubernetes components nodetrust's cluster tests (test/cluster) run
# against, from Go modules through the module proxy (nothing is downloaded as a
# binary): kube-apiserver, kubectl, kube-controller-manager, kube-scheduler
# (k8s.io/kubernetes) and kwok (sigs.k8s.io/kwok). With --kubelet (test/node)
# also kubelet, from the same module with the same ldflags. etcd comes from
# Debian (test/scripts/deps.sh).
#
# Binaries are cached outside the repo, keyed by version:
#   $NODETRUST_CACHE/k8s/<k8s version>/bin/{kube-apiserver,kubectl,kube-controller-manager,kube-scheduler[,kubelet]}
#   $NODETRUST_CACHE/k8s/kwok-<kwok version>/bin/kwok
# (NODETRUST_CACHE defaults to ~/.cache/nodetrust). Idempotent (skips what
# exists), atomic (temp name then mv), safe to run concurrently (flock).
#
# Usage: test/scripts/k8s-build.sh [--kubelet] [--print-bin-dir|--print-kwok-dir]
# Env:   K8S_VERSION (default below), KWOK_VERSION, NODETRUST_SKIP_DEPS=1
#
# Cold build on 2 cores: about 15 min for everything (see test/cluster/README.md).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
K8S_DIR="$CACHE/k8s/$K8S_VERSION"
KWOK_DIR="$CACHE/k8s/kwok-$KWOK_VERSION"
K8S_BINS=(kube-apiserver kubectl kube-controller-manager kube-scheduler)

if [[ "${1:-}" == --kubelet ]]; then
	# kubelet only for the suites that run one (test/node): ~1 min warm, more cold.
	K8S_BINS+=(kubelet)
	shift
fi

case "${1:-}" in
--print-bin-dir)
	echo "$K8S_DIR/bin"
	exit 0
	;;
--print-kwok-dir)
	echo "$KWOK_DIR/bin"
	exit 0
	;;
"") ;;
*)
	echo "usage: $0 [--kubelet] [--print-bin-dir|--print-kwok-dir]" >&2
	exit 2
	;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

all_present() {
	local b
	for b in "${K8S_BINS[@]}"; do
		[[ -x "$K8S_DIR/bin/$b" ]] || return 1
	done
	[[ -x "$KWOK_DIR/bin/kwok" ]] || return 1
}

if [[ "${NODETRUST_SKIP_DEPS:-}" != 1 ]]; then
	"$here/deps.sh"
fi

if all_present; then
	log "all binaries present in $K8S_DIR/bin and $KWOK_DIR/bin"
	exit 0
fi

go_build_env

mkdir -p "$K8S_DIR/bin" "$KWOK_DIR/bin"
build_lock "$CACHE/k8s/.build.lock"
if all_present; then
	log "built concurrently by another run; done"
	exit 0
fi

t_all=$(date +%s)

# ---------------------------------------------------------------- kubernetes
src="$K8S_DIR/src"
mkdir -p "$src"
# A tools.go that lacks one of the binaries (an older cache without kubelet)
# needs a new tidy: the module graph must cover that command's imports.
for b in "${K8S_BINS[@]}"; do
	if [[ -f "$src/tools.go" ]] && ! grep -q "k8s.io/kubernetes/cmd/$b\"" "$src/tools.go"; then
		log "$src/tools.go lacks $b: tidying again"
		rm -f "$src/.tidy-ok"
	fi
done
if [[ ! -f "$src/go.sum" || ! -f "$src/.tidy-ok" ]]; then
	log "preparing throwaway module in $src for k8s.io/kubernetes $K8S_VERSION"
	modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
	if [[ ! -f "$modfile" ]]; then
		# Outside any module, 'go mod download mod@version' fetches the .mod (and the zip).
		(cd "$(mktemp -d)" && timed "go mod download kubernetes" go mod download "k8s.io/kubernetes@$K8S_VERSION")
	fi
	[[ -f "$modfile" ]] || {
		log "cannot find $modfile"
		exit 1
	}
	staging_ver="v0.${K8S_VERSION#v1.}"
	replaces=$(sed -n '/^replace (/,/^)/p' "$modfile" |
		awk -v v="$staging_ver" '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, v }')
	n=$(printf '%s\n' "$replaces" | grep -c '=>' || true)
	if [[ "$n" -lt 25 ]]; then
		log "only $n staging replace lines found in $modfile; refusing"
		exit 1
	fi
	log "$n staging replace lines ($staging_ver)"
	cat >"$src/go.mod" <<EOF
module nodetrust.test/k8sbuild

go 1.24.0

require k8s.io/kubernetes $K8S_VERSION

replace (
$replaces
)
EOF
	{
		printf '//go:build tools\n\npackage k8sbuild\n\nimport (\n'
		for b in "${K8S_BINS[@]}"; do
			printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"
		done
		printf ')\n'
	} >"$src/tools.go"
	rm -f "$src/go.sum"
	(cd "$src" && timed "go mod tidy (kubernetes $K8S_VERSION)" go mod tidy)
	touch "$src/.tidy-ok"
fi

major=${K8S_VERSION#v}
major=${major%%.*}
minor=${K8S_VERSION#v*.}
minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

for b in "${K8S_BINS[@]}"; do
	out="$K8S_DIR/bin/$b"
	if [[ -x "$out" ]]; then
		log "$b: cached"
		continue
	fi
	tmp="$K8S_DIR/bin/.$b.tmp.$$"
	(cd "$src" && timed "build $b $K8S_VERSION" go build -tags tools -trimpath -ldflags "$ldflags" -o "$tmp" "k8s.io/kubernetes/cmd/$b")
	mv -f "$tmp" "$out"
done

# ---------------------------------------------------------------------- kwok
if [[ ! -x "$KWOK_DIR/bin/kwok" ]]; then
	ksrc="$KWOK_DIR/src"
	mkdir -p "$ksrc"
	tool_module "$ksrc" kwokbuild sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok kwok
	tmp="$KWOK_DIR/bin/.kwok.tmp.$$"
	kl="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
	(cd "$ksrc" && timed "build kwok $KWOK_VERSION" go build -tags tools -trimpath -ldflags "$kl" -o "$tmp" sigs.k8s.io/kwok/cmd/kwok)
	mv -f "$tmp" "$KWOK_DIR/bin/kwok"
else
	log "kwok: cached"
fi

log "done in $(($(date +%s) - t_all)) s: $K8S_DIR/bin, $KWOK_DIR/bin"
