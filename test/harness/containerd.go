package harness

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// ContainerdSock is the gRPC socket of a containerd whose config top
// ContainerdConfigTop(dir, …) rendered.
func ContainerdSock(dir string) string { return filepath.Join(dir, "containerd.sock") }

// ContainerdConfigTop renders what every suite's own containerd shares at
// the top of its config: the config version (2 for containerd 1.x, 3 for
// 2.x), a root, state and gRPC, ttrpc and debug sockets of its own under
// dir, and the plugins it runs without. The caller appends its plugin
// tables.
func ContainerdConfigTop(dir string, version int, disabled ...string) string {
	var off string
	if len(disabled) > 0 {
		off = "disabled_plugins = [\n"
		for _, p := range disabled {
			off += fmt.Sprintf("  %q,\n", p)
		}
		off += "]\n"
	}
	sock := ContainerdSock(dir)
	return fmt.Sprintf(`version = %d
root = %q
state = %q
%s
[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = %q
`, version, filepath.Join(dir, "root"), filepath.Join(dir, "state"), off, sock, sock+".ttrpc", filepath.Join(dir, "debug.sock"))
}

// StartContainerd runs a containerd (bin and args end in containerd, perhaps
// through unshare or env) with its output in dir/containerd.log, and waits
// up to 30 s until ready succeeds; containerd exiting first fails the test.
// When the test ends containerd gets SIGTERM: one that needs SIGKILL after
// 15 s fails the test, and a failed test logs the tail of its log.
func StartContainerd(t testing.TB, dir string, ready func() error, bin string, args ...string) *Proc {
	t.Helper()
	p, err := StartProc("containerd", filepath.Join(dir, "containerd.log"), bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		err, took, killed := p.Stop(15 * time.Second)
		if killed {
			t.Errorf("containerd did not exit within 15 s of SIGTERM (%v, %v)", err, took)
		}
		if t.Failed() {
			t.Logf("---- containerd log tail (%s) ----\n%s", p.LogPath, p.Tail(6000))
		}
	})
	var last error
	ok := Poll(30*time.Second, 50*time.Millisecond, func() bool {
		if done, _ := p.Exited(); done {
			return true
		}
		last = ready()
		return last == nil
	})
	if done, werr := p.Exited(); done || !ok {
		t.Fatalf("containerd not ready (exited=%v %v; last: %v)\n%s", done, werr, last, p.Tail(6000))
	}
	return p
}
