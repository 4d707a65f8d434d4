package systemd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/systemd"
	"github.com/nodetrust/nodetrust/test/harness"
)

// writeFile writes content to path (relative to root), creating directories.
func writeFile(t *testing.T, root, path, content string) {
	t.Helper()
	p := filepath.Join(root, path)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
}

// enable does what `systemctl enable UNIT` does for a unit with
// WantedBy=multi-user.target.
func enable(t *testing.T, root, unit string) {
	t.Helper()
	dir := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.Symlink("/etc/systemd/system/"+unit, filepath.Join(dir, unit)))
}

// container is a Debian root booted with systemd-nspawn, whose system bus
// this machine talks to.
type container struct {
	*harness.Machine
	address string        // D-Bus address of its system bus, reachable from the host
	conn    *sddbus.Conn  // connection to that bus
	booted  time.Duration // from starting nspawn to SystemState running/degraded
}

// boot starts systemd inside root and waits until it reports the system
// running; cleanup halts it again.
func boot(t *testing.T, root string) *container {
	t.Helper()
	c := startContainer(t, root)
	c.waitBooted(t)
	return c
}

// startContainer starts systemd-nspawn on root without waiting for the boot
// (waitBooted does), so that several containers can boot at once; cleanup
// halts it. Each runs in cgroups of its own (harness.StartMachine);
// --private-network: the container's services must not touch the host's
// network.
func startContainer(t *testing.T, root string) *container {
	t.Helper()
	c := &container{Machine: harness.StartMachine(t, root, harness.MachineOptions{
		Name: "systemd-test", Args: []string{"--private-network"}})}
	t.Cleanup(func() {
		if c.conn != nil {
			c.conn.Close()
		}
	})
	return c
}

// waitBooted waits until the container's systemd reports the system running
// and its bus answers from the host.
func (c *container) waitBooted(t *testing.T) {
	t.Helper()
	var state string
	ok := c.WaitBoot(t, 60*time.Second, func() bool {
		if c.address == "" {
			c.address = fmt.Sprintf("unix:path=/proc/%d/root/run/dbus/system_bus_socket", c.Leader)
		}
		if c.conn == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c.conn, _ = systemd.Dial(ctx, c.address) // not up yet: try again
			cancel()
		}
		if c.conn == nil {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		p, err := c.conn.SystemStateContext(ctx)
		cancel()
		if err == nil {
			state, _ = p.Value.Value().(string)
		}
		return state == "running" || state == "degraded"
	})
	if !ok {
		t.Fatalf("container not running after 60 s (leader %d, SystemState %q)\n%s", c.Leader, state, c.consoleOutput())
	}
	c.booted = time.Since(c.Started)
	t.Logf("booted: nspawn PID %d, container PID 1 = host PID %d, SystemState %q after %s; bus %s",
		c.NspawnPID(), c.Leader, state, c.booted.Round(time.Millisecond), c.address)
	require.Equal(t, "running", state, "no unit may have failed during boot")
}

// consoleOutput is the console log so far.
func (c *container) consoleOutput() string {
	b, _ := os.ReadFile(c.Console)
	return string(b)
}

// cmdline returns the command line of the process with PID pid inside the
// container's PID namespace, or "" if there is none.
func (c *container) cmdline(pid uint32) string {
	b, err := os.ReadFile(c.Inside(fmt.Sprintf("/proc/%d/cmdline", pid)))
	if err != nil {
		return ""
	}
	return strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " ")
}
