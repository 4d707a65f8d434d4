package containerd

import (
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/nodetrust/nodetrust/pkg/certsd"
)

// Layout says where a node's containerd keeps its configuration: kubeadm and
// most distributions use /etc/containerd, k3s and RKE2 their own agent
// directory, MicroK8s its snap revision.
type Layout struct {
	// Name is "containerd" (/etc/containerd: kubeadm, Debian, Ubuntu, EKS,
	// AKS, kind), "k3s", "rke2", "microk8s" or "custom" (--containerd-config).
	Name string
	// Config is the host path of the main config file.
	Config string
	// Template, when set, is the file the distribution renders Config from
	// at every start: editing Config is pointless, the change goes there.
	Template string
	// HostsDir is the hosts directory the distribution itself uses.
	HostsDir string
}

// Layouts nodetrust knows, in the order they are looked for: a k3s or RKE2
// agent directory means that distribution's containerd runs the node, even
// when a package also left an /etc/containerd behind.
var (
	K3s = Layout{Name: "k3s",
		Config:   "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
		Template: "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
		HostsDir: certsd.K3s}
	RKE2 = Layout{Name: "rke2",
		Config:   "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
		Template: "/var/lib/rancher/rke2/agent/etc/containerd/config.toml.tmpl",
		HostsDir: certsd.RKE2}
	// MicroK8s renders args/containerd.toml from containerd-template.toml
	// at start, with config_path "${SNAP_DATA}/args/certs.d".
	MicroK8s = Layout{Name: "microk8s",
		Config:   microk8sCurrent + "/args/containerd.toml",
		Template: microk8sCurrent + "/args/containerd-template.toml",
		HostsDir: certsd.MicroK8s}
	Default = Layout{Name: "containerd", Config: "/" + ConfigFile, HostsDir: CertsDir}
)

const microk8sCurrent = "/var/snap/microk8s/current"

// DiscoverLayout finds the containerd configuration in effect on the node:
// override (--containerd-config) when set, else the first layout whose main
// config exists. present is false when no containerd is found at all: no
// config file and no /etc/containerd directory (hasEtc). fsys is the host
// root (see ReadConfig); a MicroK8s snap's "current" link is read with
// fs.ReadLink.
func DiscoverLayout(fsys fs.FS, override string, hasEtc bool) (l Layout, present bool, err error) {
	if override != "" {
		if !path.IsAbs(override) {
			return Layout{}, false, fmt.Errorf("--containerd-config %q: want an absolute path on the node", override)
		}
		return Layout{Name: "custom", Config: path.Clean(override), HostsDir: CertsDir}, true, nil
	}
	for _, cand := range []Layout{K3s, RKE2} {
		if exists(fsys, cand.Config) {
			return cand, true, nil
		}
	}
	if exists(fsys, MicroK8s.Config) {
		l, err := resolveMicroK8s(fsys)
		return l, true, err
	}
	return Default, hasEtc || exists(fsys, Default.Config), nil
}

func exists(fsys fs.FS, hostPath string) bool {
	_, err := fs.ReadFile(fsys, fsName(hostPath))
	return err == nil
}

// resolveMicroK8s replaces the "current" symlink of the snap by the
// revision it points at: nodetrust writes through no symlink.
func resolveMicroK8s(fsys fs.FS) (Layout, error) {
	target, err := fs.ReadLink(fsys, fsName(microk8sCurrent))
	if err != nil {
		return MicroK8s, fmt.Errorf("microk8s: resolve %s: %w", microk8sCurrent, err)
	}
	if !path.IsAbs(target) {
		target = path.Join(path.Dir(microk8sCurrent), target)
	}
	target = path.Clean(target)
	if path.Dir(target) != path.Dir(microk8sCurrent) {
		return MicroK8s, fmt.Errorf("microk8s: %s points at %s, outside /var/snap/microk8s", microk8sCurrent, target)
	}
	l := MicroK8s
	l.Config = ResolveSnap(l.Config, target)
	l.Template = ResolveSnap(l.Template, target)
	l.HostsDir = ResolveSnap(l.HostsDir, target)
	return l, nil
}

// ResolveSnap replaces a leading /var/snap/microk8s/current in p by
// revision, the directory it links to.
func ResolveSnap(p, revision string) string {
	if rest, ok := strings.CutPrefix(p, microk8sCurrent); ok && (rest == "" || rest[0] == '/') {
		return revision + rest
	}
	return p
}

// Talos is the os-release ID of Talos Linux: /etc is read-only and its
// controller deletes files it did not generate.
const Talos = "talos"

// TalosProblem is the node problem of a Talos node, with the alternative.
func TalosProblem(registry string) string {
	return fmt.Sprintf("Talos Linux is unsupported: /etc is read-only and machined removes files it did not generate; "+
		"put the CA in the machine config instead (machine.registries.config.%q.tls.ca, applied with talosctl patch machineconfig)", registry)
}
