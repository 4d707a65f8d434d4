package systemd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
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

// container is a Debian root booted with systemd-nspawn.
type container struct {
	root    string
	nspawn  *exec.Cmd
	exited  chan struct{} // closed once nspawn exited
	waitErr error         // nspawn's exit, valid after exited is closed
	console string        // file with nspawn's and the container's console output
	leader  int           // host PID of the container's PID 1 (systemd)
	address string        // D-Bus address of its system bus, reachable from the host
	conn    *sddbus.Conn  // connection to that bus
	booted  time.Duration // from starting nspawn to SystemState running/degraded
	started time.Time     // when nspawn was started
	cgroups []string      // the container's own cgroups (see privateCgroups)
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
// halts it. nspawn runs in cgroups of its own (privateCgroups): with
// --keep-unit it puts the container into "payload" below the cgroup it was
// started in, so two containers started from one cgroup would share every
// unit's cgroup.
func startContainer(t *testing.T, root string) *container {
	t.Helper()
	c := &container{root: root, exited: make(chan struct{}), console: filepath.Join(t.TempDir(), "console.log")}
	console, err := os.Create(c.console)
	require.NoError(t, err)
	defer console.Close()

	c.cgroups, err = privateCgroups(fmt.Sprintf("nodetrust-test-%d-%d", os.Getpid(), containerSeq.Add(1)))
	require.NoError(t, err, "create the container's cgroups")
	// --register=no: no systemd-machined on the test machine; --keep-unit:
	// no scope unit to create; --private-network: the container's services
	// must not touch the host's network; --console=pipe: no TTY here. The
	// shell moves itself into the private cgroups, then becomes nspawn.
	c.nspawn = exec.Command("sh", "-c", `for d in $NODETRUST_CGROUPS; do echo 0 >"$d/cgroup.procs" || exit 125; done; exec "$@"`,
		"sh", "systemd-nspawn", "-D", root, "--register=no", "--keep-unit",
		"--private-network", "--console=pipe", "-b")
	c.nspawn.Env = append(os.Environ(), "NODETRUST_CGROUPS="+strings.Join(c.cgroups, " "))
	c.nspawn.Stdout, c.nspawn.Stderr = console, console
	c.started = time.Now()
	if err := c.nspawn.Start(); err != nil {
		removeCgroups(t, c.cgroups)
		t.Fatalf("start systemd-nspawn: %v", err)
	}
	go func() {
		c.waitErr = c.nspawn.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() { c.stop(t) })
	return c
}

// waitBooted waits until the container's systemd reports the system running
// and its bus answers from the host.
func (c *container) waitBooted(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var state string
	for {
		select {
		case <-c.exited:
			t.Fatalf("systemd-nspawn exited during boot: %v\n%s", c.waitErr, c.consoleOutput())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("container not running after 60 s (leader %d, SystemState %q)\n%s", c.leader, state, c.consoleOutput())
		}
		if c.leader == 0 {
			c.leader = harness.LeaderPID(c.nspawn.Process.Pid)
			if c.leader != 0 {
				c.address = fmt.Sprintf("unix:path=/proc/%d/root/run/dbus/system_bus_socket", c.leader)
			}
		}
		if c.leader != 0 && c.conn == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c.conn, _ = systemd.Dial(ctx, c.address) // not up yet: try again
			cancel()
		}
		if c.conn != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			p, err := c.conn.SystemStateContext(ctx)
			cancel()
			if err == nil {
				state, _ = p.Value.Value().(string)
			}
			if state == "running" || state == "degraded" {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.booted = time.Since(c.started)
	t.Logf("booted: nspawn PID %d, container PID 1 = host PID %d, SystemState %q after %s; bus %s",
		c.nspawn.Process.Pid, c.leader, state, c.booted.Round(time.Millisecond), c.address)
	require.Equal(t, "running", state, "no unit may have failed during boot")
}

// consoleOutput is the console log so far.
func (c *container) consoleOutput() string {
	b, _ := os.ReadFile(c.console)
	return string(b)
}

// inside returns the host path of path inside the running container (its
// mounts included, such as /proc and the tmpfs on /run).
func (c *container) inside(path string) string {
	return fmt.Sprintf("/proc/%d/root%s", c.leader, path)
}

// cmdline returns the command line of the process with PID pid inside the
// container's PID namespace, or "" if there is none.
func (c *container) cmdline(pid uint32) string {
	b, err := os.ReadFile(c.inside(fmt.Sprintf("/proc/%d/cmdline", pid)))
	if err != nil {
		return ""
	}
	return strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " ")
}

// stop halts the container: SIGTERM makes nspawn ask systemd to power off;
// after 15 s a second SIGTERM terminates it at once, and SIGKILL (to nspawn
// and to the container's PID 1, which takes its whole PID namespace with it)
// is the last resort.
func (c *container) stop(t *testing.T) {
	if c.conn != nil {
		c.conn.Close()
	}
	start := time.Now()
	wait := func(d time.Duration) bool {
		select {
		case <-c.exited:
			return true
		case <-time.After(d):
			return false
		}
	}
	_ = c.nspawn.Process.Signal(syscall.SIGTERM)
	if !wait(15 * time.Second) {
		t.Errorf("container did not halt within 15 s of SIGTERM")
		_ = c.nspawn.Process.Signal(syscall.SIGTERM)
		if !wait(5 * time.Second) {
			if c.leader != 0 {
				_ = syscall.Kill(c.leader, syscall.SIGKILL)
			}
			_ = c.nspawn.Process.Kill()
			<-c.exited
		}
	}
	var exitErr *exec.ExitError
	if c.waitErr != nil && !errors.As(c.waitErr, &exitErr) {
		t.Errorf("systemd-nspawn: %v", c.waitErr)
	}
	t.Logf("container halted in %s (nspawn: %v)", time.Since(start).Round(time.Millisecond), c.waitErr)
	removeCgroups(t, c.cgroups)
	if t.Failed() {
		t.Logf("console:\n%s", c.consoleOutput())
	}
}

// containerSeq numbers the containers of this test process.
var containerSeq atomic.Int64

// privateCgroups creates a cgroup called name below this process's own
// cgroup in each hierarchy that systemd uses to track units: the cgroup2
// hierarchy (unified or hybrid) and the cgroup1 name=systemd one (legacy or
// hybrid). It returns their directories.
func privateCgroups(name string) ([]string, error) {
	own := map[string]string{} // "0::" or "name=systemd" -> this process's path
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		switch {
		case len(f) != 3:
		case f[0] == "0" && f[1] == "":
			own["cgroup2"] = f[2]
		case f[1] == "name=systemd":
			own["name=systemd"] = f[2]
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var dirs []string
	seen := map[string]bool{}
	for _, line := range strings.Split(string(mi), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		mf, pf := strings.Fields(pre), strings.Fields(post)
		if len(mf) < 5 || len(pf) < 3 {
			continue
		}
		key := ""
		switch {
		case pf[0] == "cgroup2":
			key = "cgroup2"
		case pf[0] == "cgroup" && slices.Contains(strings.Split(pf[2], ","), "name=systemd"):
			key = "name=systemd"
		}
		path, ok := own[key]
		if key == "" || !ok || seen[key] {
			continue
		}
		rel, ok := strings.CutPrefix(path, mf[3]) // the mount's root within the hierarchy
		if !ok {
			continue
		}
		seen[key] = true
		dir := filepath.Join(mf[4], rel, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			harness.RemoveCgroups(dirs)
			return nil, err
		}
		dirs = append(dirs, dir)
	}
	return dirs, nil
}

// removeCgroups removes the cgroups made by privateCgroups, with everything
// nspawn and the container's systemd created below them.
func removeCgroups(t *testing.T, dirs []string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := harness.RemoveCgroups(dirs)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("cgroups not removable: %s", strings.Join(left, ", "))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
