#!/usr/bin/env bash
# Produce a minimal Debian bookworm root filesystem at DEST.
#
# The first call builds the root with debootstrap (minbase + ca-certificates,
# openssl, curl, and systemd/systemd-sysv/dbus so the same root serves the
# systemd suite) and caches it as a tarball:
#   ${NODETRUST_CACHE:-$HOME/.cache/nodetrust}/debian-root-bookworm-v1.tar
# Every later call only extracts that tarball into DEST.
#
# Usage: test/scripts/debian-root.sh DEST
#   DEST must not exist or be an empty directory.
# Environment:
#   NODETRUST_CACHE          cache directory (default $HOME/.cache/nodetrust)
#   NODETRUST_DEBIAN_MIRROR  mirror URL (default: parsed from this machine's apt sources)
#   NODETRUST_DEBIAN_INCLUDE comma-separated --include list (changes the cache key)
# Needs root and debootstrap (test/scripts/deps.sh installs it).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUITE=bookworm
CACHE_VERSION=v1
DEFAULT_INCLUDE=ca-certificates,openssl,curl,systemd,systemd-sysv,dbus


# now_ms prints a monotonic-enough wall clock in milliseconds.
now_ms() {
	local t=${EPOCHREALTIME/./}
	printf '%s\n' "$((t / 1000))"
}
elapsed() { # elapsed START_MS -> "12.345 s"
	local d=$(($(now_ms) - $1))
	printf '%d.%03d s' "$((d / 1000))" "$((d % 1000))"
}

# apt_mirror prints the Debian archive URI that this machine's apt sources use
# for the main suite (not -security, not -updates).
apt_mirror() {
	local f uri
	# deb822 style (Debian 12 default): /etc/apt/sources.list.d/*.sources
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f "$f" ]] || continue
		uri=$(awk -v suite="$SUITE" '
			function flush() {
				if (types ~ /(^|[[:space:]])deb([[:space:]]|$)/ && (" " suites " ") ~ (" " suite " ") && uris != "" && !found) {
					split(uris, u, /[[:space:]]+/); print u[1]; found = 1
				}
				types = ""; suites = ""; uris = ""
			}
			/^[[:space:]]*#/ { next }
			/^[[:space:]]*$/ { flush(); next }
			tolower($1) == "types:"  { $1 = ""; types = $0 }
			tolower($1) == "suites:" { $1 = ""; suites = $0; gsub(/^[[:space:]]+|[[:space:]]+$/, "", suites) }
			tolower($1) == "uris:"   { $1 = ""; uris = $0; gsub(/^[[:space:]]+|[[:space:]]+$/, "", uris) }
			END { flush() }
		' "$f")
		if [[ -n "$uri" ]]; then
			printf '%s\n' "$uri"
			return
		fi
	done
	# one-line style: /etc/apt/sources.list and /etc/apt/sources.list.d/*.list
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f "$f" ]] || continue
		uri=$(awk -v suite="$SUITE" '
			$1 != "deb" { next }
			{
				i = 2
				if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
				if ($(i + 1) == suite) { print $i; exit }
			}
		' "$f")
		if [[ -n "$uri" ]]; then
			printf '%s\n' "$uri"
			return
		fi
	done
	printf '%s\n' "http://deb.debian.org/debian"
}

# unmount_under DIR unmounts everything mounted below DIR (deepest first).
unmount_under() {
	local dir m
	dir=$(realpath -m "$1")
	awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/self/mounts | sort -r |
		while read -r m; do
			umount -l "$m" 2>/dev/null || true
		done
}

[[ $# -eq 1 ]] || die "usage: $0 DEST"
DEST=$1
[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap and tar --same-owner)"

INCLUDE=${NODETRUST_DEBIAN_INCLUDE:-$DEFAULT_INCLUDE}
NAME="debian-root-$SUITE-$CACHE_VERSION"
if [[ "$INCLUDE" != "$DEFAULT_INCLUDE" ]]; then
	NAME="$NAME-$(printf '%s' "$INCLUDE" | sha256sum | cut -c1-8)"
fi
TARBALL="$CACHE/$NAME.tar"

if [[ -e "$DEST" ]]; then
	[[ -d "$DEST" ]] || die "$DEST exists and is not a directory"
	[[ -z "$(ls -A "$DEST")" ]] || die "$DEST is not empty"
fi
mkdir -p "$CACHE" "$DEST"

total=$(now_ms)

build_tarball() {
	command -v debootstrap >/dev/null || die "debootstrap not installed (run test/scripts/deps.sh)"
	local mirror build tmp t
	mirror=${NODETRUST_DEBIAN_MIRROR:-$(apt_mirror)}
	build=$(mktemp -d "$CACHE/.build.XXXXXX")
	tmp="$build.tar"
	# shellcheck disable=SC2064 # expand now: the trap must clean this build
	trap "unmount_under '$build'; rm -rf --one-file-system '$build' '$tmp'" EXIT

	log "cache miss: building $TARBALL"
	log "debootstrap --variant=minbase --include=$INCLUDE $SUITE from $mirror"
	t=$(now_ms)
	if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$build/root" "$mirror" \
		>"$build.log" 2>&1; then
		tail -n 30 "$build.log" >&2
		die "debootstrap failed (full log: $build.log)"
	fi
	log "debootstrap: $(elapsed "$t") ($(du -sm "$build/root" | cut -f1) MB)"
	rm -f "$build.log"
	unmount_under "$build/root"

	# Leave nothing host-specific or bulky in the cached root.
	rm -rf "$build/root/var/cache/apt/archives/"*.deb "$build/root/var/lib/apt/lists/"* \
		"$build/root/debootstrap"

	t=$(now_ms)
	tar --numeric-owner --xattrs --one-file-system -C "$build/root" -cf "$tmp" .
	mv -f "$tmp" "$TARBALL"
	log "tar: $(elapsed "$t") ($(du -m "$TARBALL" | cut -f1) MB)"

	unmount_under "$build"
	rm -rf --one-file-system "$build"
	trap - EXIT
}

# Serialise builders: parallel test runs share one cold build.
exec {lock}>"$CACHE/.$NAME.lock"
if [[ ! -f "$TARBALL" ]]; then
	t=$(now_ms)
	flock "$lock"
	[[ -f "$TARBALL" ]] || build_tarball
	log "cache build total: $(elapsed "$t")"
else
	log "cache hit: $TARBALL"
fi
exec {lock}>&-

t=$(now_ms)
tar --numeric-owner --same-owner --same-permissions --xattrs -C "$DEST" -xf "$TARBALL"
log "extract into $DEST: $(elapsed "$t")"
log "total: $(elapsed "$total")"
