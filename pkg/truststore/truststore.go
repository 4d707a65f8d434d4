// Package truststore knows where each Linux distribution keeps its local
// trust anchors and which command rebuilds the system bundle, detected from
// /etc/os-release, and runs that command inside the host root.
package truststore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// OSReleasePath is the os-release file, relative to the host root.
const OSReleasePath = "etc/os-release"

// Store describes one OS family's trust store.
type Store struct {
	Family    string   // debian, alpine, rhel, suse, flatcar
	AnchorDir string   // relative to the host root
	Ext       string   // anchor file extension the refresh command picks up
	Command   []string // absolute path inside the host root, then arguments
}

var (
	// --fresh: without it, Debian's script leaves the links to a removed
	// local anchor dangling in /etc/ssl/certs.
	debian  = Store{"debian", "usr/local/share/ca-certificates", ".crt", []string{"/usr/sbin/update-ca-certificates", "--fresh"}}
	alpine  = Store{"alpine", "usr/local/share/ca-certificates", ".crt", []string{"/usr/sbin/update-ca-certificates"}}
	rhel    = Store{"rhel", "etc/pki/ca-trust/source/anchors", ".crt", []string{"/usr/bin/update-ca-trust", "extract"}}
	suse    = Store{"suse", "etc/pki/trust/anchors", ".crt", []string{"/usr/sbin/update-ca-certificates"}}
	flatcar = Store{"flatcar", "etc/ssl/certs", ".pem", []string{"/usr/sbin/update-ca-certificates"}}
)

// byID maps os-release IDs to stores; immutable systems map to nil.
var byID = map[string]*Store{
	"debian": &debian, "ubuntu": &debian, "alpine": &alpine,
	"rhel": &rhel, "fedora": &rhel, "centos": &rhel, "rocky": &rhel, "almalinux": &rhel,
	"amzn": &rhel, "azurelinux": &rhel, "mariner": &rhel, "ol": &rhel,
	"sles": &suse, "suse": &suse, "opensuse": &suse, "opensuse-leap": &suse, "opensuse-tumbleweed": &suse,
	"flatcar":      &flatcar,
	"bottlerocket": nil, "talos": nil,
}

// Detect picks the store for an os-release file, trying ID and then each
// ID_LIKE entry. Immutable and unknown systems are an error that says so.
func Detect(osRelease []byte) (Store, error) {
	fields := parseOSRelease(osRelease)
	id := fields["ID"]
	if id == "" {
		return Store{}, fmt.Errorf("host trust is unsupported: %s has no ID", "/"+OSReleasePath)
	}
	for _, cand := range append([]string{id}, strings.Fields(fields["ID_LIKE"])...) {
		s, known := byID[cand]
		if !known {
			continue
		}
		if s == nil {
			return Store{}, fmt.Errorf("host trust is unsupported on %s: its trust store is immutable; use its own settings API", id)
		}
		return *s, nil
	}
	return Store{}, fmt.Errorf("host trust is unsupported on unknown OS %q", id)
}

func parseOSRelease(data []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		out[k] = strings.ToLower(strings.Trim(v, `"'`))
	}
	return out
}

// Timeout bounds one refresh command.
const Timeout = 2 * time.Minute

// Refresh runs the store's command inside hostRoot (chroot), so the host's
// own tool rebuilds the host's own bundle. The error carries the command's
// output.
func (s Store) Refresh(ctx context.Context, hostRoot string) error {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.Command[0], s.Command[1:]...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.Dir = "/"
	if hostRoot != "/" {
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: hostRoot}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s (in host root %s): %w: %s", strings.Join(s.Command, " "), hostRoot, err, lastLines(out, 3))
	}
	return nil
}

func lastLines(out []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
