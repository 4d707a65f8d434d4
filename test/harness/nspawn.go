package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// MachineOptions vary a systemd-nspawn machine.
type MachineOptions struct {
	// Name names the machine in messages and its cgroups.
	Name string
	// Args are systemd-nspawn options beyond -D ROOT --register=no
	// --keep-unit --console=pipe (and -b, which comes last).
	Args []string
	// Env is added to nspawn's environment (SYSTEMD_SECCOMP=0, …).
	Env []string
	// Grace is how long Stop waits for a halt after SIGTERM (default 15 s).
	Grace time.Duration
}

// Machine is a root directory booted with systemd-nspawn: its systemd is
// the machine's PID 1.
type Machine struct {
	Name    string
	Root    string    // the machine's / as seen from this machine
	Console string    // file with nspawn's and the machine's console output
	Cgroups []string  // the cgroups nspawn runs in (see PrivateCgroups)
	Leader  int       // host PID of the machine's PID 1, once WaitBoot saw it
	Started time.Time // when nspawn was started

	grace       time.Duration
	cmd         *exec.Cmd
	exited      chan struct{} // closed once nspawn exited
	waitErr     error         // nspawn's exit, valid after exited is closed
	leaderStart string        // Leader's start time (procStart)
}

// machineSeq numbers the machines of this test process.
var machineSeq atomic.Int64

// StartMachine starts systemd-nspawn -b on root without waiting for the
// boot (WaitBoot does), so that several machines can boot at once; cleanup
// halts it (Stop). nspawn runs in cgroups of its own (PrivateCgroups): with
// --keep-unit it puts the machine into "payload" below the cgroup it was
// started in, so two machines started from one cgroup would share every
// unit's cgroup. --register=no: no systemd-machined on the test machine;
// --keep-unit: no scope unit to create; --console=pipe: no TTY here.
func StartMachine(t *testing.T, root string, o MachineOptions) *Machine {
	t.Helper()
	m := &Machine{Name: o.Name, Root: root, Console: filepath.Join(t.TempDir(), "console.log"),
		grace: o.Grace, exited: make(chan struct{})}
	if m.grace == 0 {
		m.grace = 15 * time.Second
	}
	console, err := os.Create(m.Console)
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	m.Cgroups, err = PrivateCgroups(fmt.Sprintf("nodetrust-%s-%d-%d", o.Name, os.Getpid(), machineSeq.Add(1)))
	if err != nil {
		t.Fatalf("create the cgroups of machine %s: %v", o.Name, err)
	}
	// The shell moves itself into the private cgroups, then becomes nspawn.
	args := append([]string{"-c", `for d in $NODETRUST_CGROUPS; do echo 0 >"$d/cgroup.procs" || exit 125; done; exec systemd-nspawn "$@"`,
		"sh", "-D", root, "--register=no", "--keep-unit", "--console=pipe"}, o.Args...)
	m.cmd = exec.Command("sh", append(args, "-b")...)
	m.cmd.Env = append(append(os.Environ(), "NODETRUST_CGROUPS="+strings.Join(m.Cgroups, " ")), o.Env...)
	m.cmd.Stdout, m.cmd.Stderr = console, console
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	m.Started = time.Now()
	if err := m.cmd.Start(); err != nil {
		removeCgroups(t, m.Cgroups, 5*time.Second)
		t.Fatalf("start systemd-nspawn: %v", err)
	}
	go func() {
		m.waitErr = m.cmd.Wait()
		close(m.exited)
	}()
	t.Cleanup(func() { m.Stop(t) })
	return m
}

// NspawnPID is the PID of systemd-nspawn.
func (m *Machine) NspawnPID() int { return m.cmd.Process.Pid }

// WaitBoot polls until the machine's PID 1 is known and ready reports true,
// for up to timeout. It fails t if nspawn exits meanwhile and returns false
// if timeout passes (the caller says what was not ready).
func (m *Machine) WaitBoot(t *testing.T, timeout time.Duration, ready func() bool) bool {
	t.Helper()
	ok := Poll(timeout, 20*time.Millisecond, func() bool {
		select {
		case <-m.exited:
			return true
		default:
		}
		if m.Leader == 0 {
			if m.Leader = LeaderPID(m.cmd.Process.Pid); m.Leader == 0 {
				return false
			}
			m.leaderStart = procStart(m.Leader)
		}
		return ready()
	})
	select {
	case <-m.exited:
		t.Fatalf("systemd-nspawn exited during boot: %v\n%s", m.waitErr, tailFile(m.Console, 3000))
	default:
	}
	return ok
}

// Inside is path inside the running machine's mount namespace (its mounts
// included, such as /proc and the tmpfs on /run), seen from this machine.
func (m *Machine) Inside(path string) string {
	return fmt.Sprintf("/proc/%d/root%s", m.Leader, path)
}

// ConsoleTail is the last n bytes of the console log.
func (m *Machine) ConsoleTail(n int) string { return tailFile(m.Console, n) }

// Stop halts the machine: SIGTERM makes nspawn ask systemd to power off;
// after the grace a second SIGTERM terminates it at once, and SIGKILL (to
// nspawn and to the machine's PID 1, which takes its whole PID namespace
// with it) is the last resort. It then removes the machine's cgroups and
// the extra ones given, with everything below them. Stop runs once.
func (m *Machine) Stop(t *testing.T, extraCgroups ...string) {
	if m.cmd == nil {
		return
	}
	start := time.Now()
	wait := func(d time.Duration) bool {
		select {
		case <-m.exited:
			return true
		case <-time.After(d):
			return false
		}
	}
	select {
	case <-m.exited:
	default:
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		if !wait(m.grace) {
			t.Errorf("machine %s did not halt within %s of SIGTERM", m.Name, m.grace)
			_ = m.cmd.Process.Signal(syscall.SIGTERM)
			if !wait(5 * time.Second) {
				_ = m.cmd.Process.Kill()
				<-m.exited
			}
		}
	}
	// nspawn gone, its machine may not be (a SIGKILLed nspawn leaves it
	// running): killing its init ends the whole PID namespace.
	if m.Leader != 0 && m.leaderStart != "" && procStart(m.Leader) == m.leaderStart {
		_ = syscall.Kill(m.Leader, syscall.SIGKILL)
		Poll(10*time.Second, 50*time.Millisecond, func() bool { return procStart(m.Leader) != m.leaderStart })
	}
	var exitErr *exec.ExitError
	if m.waitErr != nil && !errors.As(m.waitErr, &exitErr) {
		t.Errorf("systemd-nspawn: %v", m.waitErr)
	}
	t.Logf("machine %s halted in %s (nspawn: %v)", m.Name, time.Since(start).Round(time.Millisecond), m.waitErr)
	if t.Failed() {
		t.Logf("---- machine %s console ----\n%s", m.Name, m.ConsoleTail(4000))
	}
	removeCgroups(t, append(slices.Clone(m.Cgroups), extraCgroups...), 10*time.Second)
	m.cmd = nil
}

// procStart is field 22 of /proc/PID/stat (start time in clock ticks), or
// "" when there is no such process: a PID with the same start time is the
// same process.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// PrivateCgroups creates a cgroup called name below this process's own
// cgroup in each hierarchy that systemd uses to track units: the cgroup2
// hierarchy (unified or hybrid) and the cgroup1 name=systemd one (legacy or
// hybrid), found in /proc/self/mountinfo. It returns their directories.
func PrivateCgroups(name string) ([]string, error) {
	own, err := ownCgroupPaths()
	if err != nil {
		return nil, err
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var dirs []string
	seen := map[string]bool{}
	for _, line := range strings.Split(string(mi), "\n") {
		key, mountRoot, mountPoint := cgroupMount(line)
		path, ok := own[key]
		if key == "" || !ok || seen[key] {
			continue
		}
		rel, ok := strings.CutPrefix(path, mountRoot) // the mount's root within the hierarchy
		if !ok {
			continue
		}
		seen[key] = true
		dir := filepath.Join(mountPoint, rel, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			RemoveCgroups(dirs)
			return nil, err
		}
		dirs = append(dirs, dir)
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("no name=systemd or cgroup2 hierarchy of this process's cgroups %v is mounted", own)
	}
	return dirs, nil
}

// ownCgroupPaths reads /proc/self/cgroup: this process's path in the
// cgroup2 hierarchy ("cgroup2") and the cgroup1 "name=systemd" one.
func ownCgroupPaths() (map[string]string, error) {
	own := map[string]string{}
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
	return own, nil
}

// cgroupMount parses a mountinfo line: which hierarchy it mounts ("cgroup2",
// "name=systemd" or ""), the hierarchy path it mounts and where.
func cgroupMount(line string) (key, root, point string) {
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		return "", "", ""
	}
	mf, pf := strings.Fields(pre), strings.Fields(post)
	if len(mf) < 5 || len(pf) < 3 {
		return "", "", ""
	}
	switch {
	case pf[0] == "cgroup2":
		key = "cgroup2"
	case pf[0] == "cgroup" && slices.Contains(strings.Split(pf[2], ","), "name=systemd"):
		key = "name=systemd"
	}
	return key, mf[3], mf[4]
}

// removeCgroups removes dirs (RemoveCgroups) until they are gone or
// timeout passes, then fails t with those left.
func removeCgroups(t *testing.T, dirs []string, timeout time.Duration) {
	if !Poll(timeout, 50*time.Millisecond, func() bool { return len(RemoveCgroups(dirs)) == 0 }) {
		t.Errorf("cgroups not removable: %s", strings.Join(RemoveCgroups(dirs), ", "))
	}
}

// LeaderPID returns the host PID of the container's PID 1: the descendant of
// nspawn whose PID in its own namespace is 1, or 0 if there is none yet.
func LeaderPID(nspawn int) int {
	queue := []int{nspawn}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if pid != nspawn && NSPIDIsOne(pid) {
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

// NSPIDIsOne reports whether pid is PID 1 of a nested PID namespace
// ("NSpid:\t<host pid>\t1" in /proc/PID/status).
func NSPIDIsOne(pid int) bool {
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

// RemoveCgroups removes cgroup directories deepest first and returns
// those that are still there.
func RemoveCgroups(dirs []string) (left []string) {
	for _, top := range dirs {
		var all []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				all = append(all, p)
			}
			return nil
		})
		for i := len(all) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(all[i])
		}
		if _, err := os.Stat(top); err == nil {
			left = append(left, top)
		}
	}
	return left
}
