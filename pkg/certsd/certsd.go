// Package certsd names every host directory where a container runtime reads
// registry trust: containerd's hosts directories (one per distribution
// layout), Docker's certs.d and containers/image's. Each is a host path
// ("/etc/docker/certs.d"); Rel gives it relative to the host root, as
// hostfs and plan name files. Every package that writes or judges one of
// these directories takes its path from here.
package certsd

import "strings"

// containerd's hosts directories (config_path), by distribution layout.
const (
	// Containerd is containerd's own: kubeadm, Debian, Ubuntu, EKS, AKS,
	// kind, and containerd 2.2's default config_path with Docker.
	Containerd = "/etc/containerd/certs.d"
	// K3s and RKE2 keep containerd's configuration in their agent
	// directory.
	K3s  = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"
	RKE2 = "/var/lib/rancher/rke2/agent/etc/containerd/certs.d"
	// MicroK8s renders config_path "${SNAP_DATA}/args/certs.d"; "current"
	// links to the snap's revision.
	MicroK8s = "/var/snap/microk8s/current/args/certs.d"
)

// Docker reads <Docker>/<registry>/*.crt; containerd 2.2 and later read it
// too by default.
const Docker = "/etc/docker/certs.d"

// containers/image (CRI-O, podman, skopeo) reads <dir>/<registry>/*.crt.
const (
	// Containers is where nodetrust writes for containers/image.
	Containers = "/etc/containers/certs.d"
	// ContainersRootful is read before Containers as root.
	ContainersRootful = "/etc/containers/certs.rootful.d"
)

// ContainersOrder returns the directories containers/image reads as root,
// in order: the first existing <dir>/<registry> wins and nothing is merged.
func ContainersOrder() []string { return []string{ContainersRootful, Containers, Docker} }

// Rel is hostPath relative to the host root.
func Rel(hostPath string) string { return strings.TrimPrefix(hostPath, "/") }
