package node

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
)

// TestMain runs one test/node process per machine at a time: a node shares
// this machine's network, so two runs' agents would both listen on the
// DaemonSet's health port (9713). Holding the lock, it also ends the nodes
// a killed earlier run left behind (a SIGKILLed nspawn leaves its container
// running).
func TestMain(m *testing.M) {
	code := func() int {
		if harness.Real() && os.Geteuid() == 0 {
			unlock, err := lockRuns()
			if err != nil {
				fmt.Fprintln(os.Stderr, "test/node:", err)
				return 1
			}
			defer unlock()
			sweepLeftNodes()
		}
		return m.Run()
	}()
	harness.CleanupBinary()
	os.Exit(code)
}

// lockRuns takes $NODETRUST_CACHE/node/.run.lock (flock), waiting for
// another run to finish.
func lockRuns() (func(), error) {
	dir := os.Getenv("NODETRUST_CACHE")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "nodetrust")
	}
	dir = filepath.Join(dir, "node")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".run.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		fmt.Fprintf(os.Stderr, "test/node: another run holds %s; waiting\n", f.Name())
		start := time.Now()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", f.Name(), err)
		}
		fmt.Fprintf(os.Stderr, "test/node: waited %v for %s\n", time.Since(start).Round(time.Second), f.Name())
	}
	return func() { f.Close() }, nil
}

// sweepLeftNodes SIGKILLs the init of every nspawn container whose root is
// a test/node root (a temporary TestNode*/…/root directory with the kubelet
// unit): with the lock held, no live run owns one.
func sweepLeftNodes() {
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, env := range procs {
		b, err := os.ReadFile(env)
		if err != nil || !strings.Contains(string(b), "container=systemd-nspawn\x00") {
			continue
		}
		dir := filepath.Dir(env)
		root := mountRoot(filepath.Join(dir, "mountinfo"))
		if !strings.HasPrefix(root, os.TempDir()+"/TestNode") || !strings.HasSuffix(root, "/root") {
			continue
		}
		// test/node's roots, and only they, have the kubelet unit written
		// by configure.
		if _, err := os.Stat(filepath.Join(root, "etc/systemd/system/kubelet.service")); err != nil {
			continue
		}
		var pid int
		if _, err := fmt.Sscan(filepath.Base(dir), &pid); err != nil || !harness.NSPIDIsOne(pid) {
			continue
		}
		fmt.Fprintf(os.Stderr, "test/node: ending a node left by an earlier run: PID %d, root %s\n", pid, root)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// mountRoot is the source of the "/" mount in a mountinfo file: for an
// nspawn container, its root directory on this machine.
func mountRoot(mountinfo string) string {
	b, err := os.ReadFile(mountinfo)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == "/" {
			return f[3]
		}
	}
	return ""
}
