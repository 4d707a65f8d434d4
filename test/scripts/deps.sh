#!/usr/bin/env bash
# Install the Debian packages nodetrust's real-component test suites need.
#
# Idempotent: when every package is already installed it exits in well under
# a second without touching apt. Runs as root, non-interactively (no TTY).
#
# Usage: test/scripts/deps.sh [EXTRA_PACKAGE...]
set -euo pipefail

PACKAGES=(
	etcd-server
	etcd-client
	docker-registry
	containerd
	skopeo
	debootstrap
	systemd-container
	dbus
	openssl
	"$@"
)

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# A package counts as present only when dpkg says "install ok installed".
# One dpkg-query call for all of them keeps the warm path fast.
declare -A installed=()
while read -r name state; do
	if [[ "$state" == "install ok installed" ]]; then
		installed["${name%%:*}"]=1
	fi
done < <(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
missing=()
for pkg in "${PACKAGES[@]}"; do
	if [[ -z "${installed[$pkg]:-}" ]]; then
		missing+=("$pkg")
	fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
	log "all ${#PACKAGES[@]} packages present"
	exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
	log "missing packages (${missing[*]}) and not root: run as root"
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Never start services from package maintainer scripts on a test machine.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "$policy" ]]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	created_policy=1
fi
cleanup() {
	if [[ $created_policy -eq 1 ]]; then
		rm -f "$policy"
	fi
}
trap cleanup EXIT

start=$(date +%s)
log "missing: ${missing[*]}"
log "apt-get update"
apt-get update -q -y </dev/null
log "apt-get install"
apt-get install -q -y --no-install-recommends \
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
	"${missing[@]}" </dev/null
log "installed ${#missing[@]} packages in $(($(date +%s) - start)) s"
