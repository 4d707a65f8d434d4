package systemd

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/test/harness"
)

const (
	// realContainerdUnit runs the host's containerd (Debian's 1.6 package)
	// inside the container, the way Debian's own unit does.
	realContainerdUnit = `[Unit]
Description=containerd, the host's binary (nodetrust --manage-containerd-config test)

[Service]
Type=notify
ExecStart=/usr/local/bin/containerd
Delegate=yes
KillMode=process

[Install]
WantedBy=multi-user.target
`
	dockerStandIn = `[Unit]
Description=Stand-in for docker (nodetrust --manage-containerd-config test)

[Service]
Type=simple
ExecStart=/bin/sh -c 'exec sleep infinity'

[Install]
WantedBy=multi-user.target
`
	// snapshotterNative: overlayfs does not mount inside the test container;
	// without a snapshotter the CRI plugin would not load at all.
	snapshotterNative = "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"native\"\n"
)

// criConfigPath returns the registry ConfigPath the containerd process pid
// logged when its CRI plugin started ("Start cri plugin with config
// {...Registry:{ConfigPath:...}"), read from the container's journal.
func (c *container) criConfigPath(t testing.TB, pid uint32) (string, bool) {
	t.Helper()
	out, err := exec.Command("journalctl", "--root", c.Inside("/"), "--no-pager", "-o", "cat",
		fmt.Sprintf("_PID=%d", pid)).Output()
	require.NoError(t, err, "journalctl in container %s", c.Root)
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.Contains(line, "Start cri plugin with config") {
			continue
		}
		_, rest, ok := strings.Cut(line, "Registry:{ConfigPath:")
		if !ok {
			t.Fatalf("no Registry.ConfigPath in containerd's CRI config line: %s", line)
		}
		value, _, _ := strings.Cut(rest, " ")
		return value, true
	}
	return "", false
}

// waitCRIConfigPath waits for pid's CRI plugin to log its config.
func (c *container) waitCRIConfigPath(t testing.TB, pid uint32) string {
	t.Helper()
	var value string
	ok := harness.Poll(30*time.Second, 50*time.Millisecond, func() bool {
		v, found := c.criConfigPath(t, pid)
		value = v
		return found
	})
	require.True(t, ok, "containerd (PID %d) logged no CRI config; is its CRI plugin loading?", pid)
	return value
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	require.NoError(t, err)
	defer in.Close()
	require.NoError(t, os.MkdirAll(filepath.Dir(to), 0o755))
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}

// TestAgentManagesContainerdConfig: on a node whose real containerd reads
// no hosts.toml, `nodetrust agent --manage-containerd-config` sets
// config_path, restarts containerd (and only containerd) through systemd,
// and the new containerd process runs with config_path set. --uninstall
// then restores the original file byte for byte and restarts nothing.
func TestAgentManagesContainerdConfig(t *testing.T) {
	harness.SkipUnlessReal(t)
	harness.SkipUnlessRoot(t, "tar --same-owner, systemd-nspawn")
	for _, bin := range []string{"systemd-nspawn", "journalctl", "containerd"} {
		_, err := exec.LookPath(bin)
		require.NoError(t, err, "%s missing: run test/scripts/deps.sh", bin)
	}
	harness.Binary(t)

	root := harness.DebianRoot(t)
	host, err := exec.LookPath("containerd")
	require.NoError(t, err)
	copyFile(t, host, filepath.Join(root, "usr/local/bin/containerd"), 0o755)
	fixture, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "hostfiles", "containerd", "debian12-default.toml"))
	require.NoError(t, err)
	original := string(fixture) + snapshotterNative
	writeFile(t, root, "etc/containerd/config.toml", original)
	writeFile(t, root, "etc/systemd/system/containerd.service", realContainerdUnit)
	writeFile(t, root, "etc/systemd/system/docker.service", dockerStandIn)
	enable(t, root, "containerd.service")
	enable(t, root, "docker.service")
	c := boot(t, root)

	pid0, dockerPID := c.mainPID(t, "containerd.service"), c.mainPID(t, "docker.service")
	require.NotZero(t, pid0)
	require.Equal(t, "", c.waitCRIConfigPath(t, pid0), "before: containerd reads no hosts.toml")

	src := filepath.Join(t.TempDir(), "sources")
	require.NoError(t, os.Mkdir(src, 0o755))
	ca := harness.NewCA("nodetrust containerd config test CA")
	const reg = "registry.example:5000"

	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	a := startDirAgent(t, c, src, "--manage-containerd-config")
	_, nSync := waitLog(t, a, "sync", 0, 30*time.Second, func(map[string]any) bool { return true })
	require.Equal(t, original, readFile(t, root, "etc/containerd/config.toml"), "no sources, no hosts.toml: the config is left alone")

	var pid1 uint32
	step("the first source sets config_path and restarts containerd only", func(t *testing.T) {
		t0 := writeManifest(t, src, "registry-ca.yaml", configMapManifest("registry-ca", reg, false, ca.PEM))
		newPID, seen := c.waitMainPIDChange(t, "containerd.service", pid0, 60*time.Second)
		pid1 = newPID
		r, _ := waitLog(t, a, "restarted", 0, 10*time.Second, func(map[string]any) bool { return true })
		require.Equal(t, "containerd.service", r["unit"])
		require.EqualValues(t, pid0, num(r, "oldPID"))
		require.EqualValues(t, newPID, num(r, "newPID"))
		require.Equal(t, "/etc/containerd/certs.d", c.waitCRIConfigPath(t, newPID),
			"the restarted containerd runs with config_path set")

		config := readFile(t, root, "etc/containerd/config.toml")
		require.True(t, strings.HasPrefix(config, original), "the edit only appends to this file:\n%s", config)
		require.Contains(t, config, "config_path = \"/etc/containerd/certs.d\" # set by nodetrust")
		require.Len(t, filesHolding(t, root, "etc/containerd/certs.d/"+reg, derOf(ca.PEM)), 1)

		l, n := waitLog(t, a, "sync", nSync, 10*time.Second, func(l map[string]any) bool { return num(l, "written") > 0 })
		nSync = n
		require.Equal(t, "Ready", l["state"], "sync line: %v", l)
		require.Empty(t, l["message"])
		settle(t, a, c, "containerd.service", 30*time.Second)
		require.Equal(t, dockerPID, c.mainPID(t, "docker.service"), "docker.service does not load containerd's config")
		require.Len(t, logsWith(a, "restarted"), 1)
		t.Logf("containerd.service: MainPID %d → %d, %s from the manifest write", pid0, newPID, seen.Sub(t0).Round(time.Millisecond))
	})

	step("a second registry restarts nothing", func(t *testing.T) {
		writeManifest(t, src, "other-ca.yaml", configMapManifest("other-ca", "other.example", false, ca.PEM))
		l, n := waitLog(t, a, "sync", nSync, 30*time.Second, func(l map[string]any) bool { return num(l, "written") > 0 })
		nSync = n
		require.Equal(t, "Ready", l["state"])
		time.Sleep(time.Second)
		require.Equal(t, pid1, c.mainPID(t, "containerd.service"))
		require.Len(t, logsWith(a, "restarted"), 1)
	})

	step("uninstall restores the original and restarts nothing", func(t *testing.T) {
		stopAgent(t, a)
		u := startDirAgent(t, c, src, "--uninstall")
		u.WaitReady(t, 30*time.Second)
		require.Equal(t, original, readFile(t, root, "etc/containerd/config.toml"), "byte for byte")
		_, err := os.Stat(filepath.Join(root, "etc/containerd/certs.d"))
		require.ErrorIs(t, err, os.ErrNotExist, "the hosts directory nodetrust created is gone")
		_, err = os.Stat(filepath.Join(root, "var/lib/nodetrust/state.json"))
		require.ErrorIs(t, err, os.ErrNotExist, "and its ownership record")
		require.Equal(t, pid1, c.mainPID(t, "containerd.service"), "restoring the original restarts nothing")
		require.Equal(t, dockerPID, c.mainPID(t, "docker.service"))
		stopAgent(t, u)
	})
}

func readFile(t testing.TB, root, rel string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, rel))
	require.NoError(t, err)
	return string(data)
}
