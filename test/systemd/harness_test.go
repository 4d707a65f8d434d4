package systemd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/systemd"
)

// requireReal skips the test unless the real-component suites were asked for.
func requireReal(t *testing.T) {
	t.Helper()
	if os.Getenv("NODETRUST_REAL") != "1" {
		t.Skip("real-component test: set NODETRUST_REAL=1 (after test/scripts/deps.sh) to run it")
	}
}

// requireRoot skips the test unless it runs as root (tar --same-owner,
// systemd-nspawn).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("real-component test needs root (tar --same-owner, systemd-nspawn)")
	}
}

// testDir is the directory of this package's sources (go test's working dir).
func testDir(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("runtime.Caller failed")
	}
	return filepath.Dir(file)
}

// debianRoot extracts a fresh Debian bookworm root (cached by
// test/scripts/debian-root.sh, with systemd, systemd-sysv and dbus) into a
// temporary directory and returns it.
func debianRoot(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	script := filepath.Join(testDir(t), "..", "scripts", "debian-root.sh")
	start := time.Now()
	out, err := exec.Command("bash", script, root).CombinedOutput()
	t.Logf("debian-root.sh (%s):\n%s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(string(out)))
	require.NoError(t, err, "debian-root.sh %s", root)
	return root
}

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
}

// boot starts systemd inside root and waits until it reports the system
// running; cleanup halts it again.
func boot(t *testing.T, root string) *container {
	t.Helper()
	c := &container{root: root, exited: make(chan struct{}), console: filepath.Join(t.TempDir(), "console.log")}
	console, err := os.Create(c.console)
	require.NoError(t, err)
	defer console.Close()

	// --register=no: no systemd-machined on the test machine; --keep-unit:
	// no scope unit to create; --private-network: the container's services
	// must not touch the host's network; --console=pipe: no TTY here.
	c.nspawn = exec.Command("systemd-nspawn", "-D", root, "--register=no", "--keep-unit",
		"--private-network", "--console=pipe", "-b")
	c.nspawn.Stdout, c.nspawn.Stderr = console, console
	start := time.Now()
	require.NoError(t, c.nspawn.Start(), "start systemd-nspawn")
	go func() {
		c.waitErr = c.nspawn.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() { c.stop(t) })

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
			c.leader = leaderPID(c.nspawn.Process.Pid)
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
	c.booted = time.Since(start)
	t.Logf("booted: nspawn PID %d, container PID 1 = host PID %d, SystemState %q after %s; bus %s",
		c.nspawn.Process.Pid, c.leader, state, c.booted.Round(time.Millisecond), c.address)
	require.Equal(t, "running", state, "no unit may have failed during boot")
	return c
}

// leaderPID returns the host PID of the container's PID 1: the descendant of
// nspawn whose PID in its own namespace is 1, or 0 if there is none yet.
func leaderPID(nspawn int) int {
	queue := []int{nspawn}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if pid != nspawn && nsPIDIsOne(pid) {
			return pid
		}
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, field := range strings.Fields(string(b)) {
				if child, err := strconv.Atoi(field); err == nil {
					queue = append(queue, child)
				}
			}
		}
	}
	return 0
}

// nsPIDIsOne reports whether pid is PID 1 of a nested PID namespace
// ("NSpid:\t<host pid>\t1" in /proc/PID/status).
func nsPIDIsOne(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			return len(f) > 1 && f[len(f)-1] == "1"
		}
	}
	return false
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
	if t.Failed() {
		t.Logf("console:\n%s", c.consoleOutput())
	}
}
