package faults

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOverlappingApplies starts a second apply of another 300-source set
// while the first holds the lock: the second waits, says so, and then
// owns exactly what is on disk.
func TestOverlappingApplies(t *testing.T) {
	h := newHost(t, "r0.example:5000")
	sets := [2][]source{}
	for i := range 300 {
		for k, prefix := range []string{"a", "b"} {
			sets[k] = append(sets[k], source{fmt.Sprintf("%s%03d", prefix, i), []string{fmt.Sprintf("r%d.example:5000", i%10)}, newCAPEM(t, prefix)})
		}
	}
	root := copyTree(t, h.dir)
	first := exec.Command(bin(t), "apply", "-f", writeManifests(t, sets[0]), "--host-root", root)
	second := exec.Command(bin(t), "apply", "-f", writeManifests(t, sets[1]), "--host-root", root)
	var out [2]bytes.Buffer
	first.Stdout, first.Stderr = &out[0], &out[0]
	second.Stdout, second.Stderr = &out[1], &out[1]
	require.NoError(t, first.Start())
	require.Eventually(t, func() bool { return flockHeldBy(t, filepath.Join(root, "var/lib/nodetrust/lock"), first.Process.Pid) },
		10*time.Second, time.Millisecond, "the first apply takes the lock")
	require.NoError(t, second.Start())
	require.NoError(t, first.Wait(), out[0].String())
	require.NoError(t, second.Wait(), out[1].String())
	require.Contains(t, out[1].String(), "waiting for the lock on "+filepath.Join(root, "var/lib/nodetrust")+" held by pid "+strconv.Itoa(first.Process.Pid)+" (nodetrust apply)")

	h.checkConverged(t, root, sets[1])
	var record struct{ Files map[string]any }
	data, err := os.ReadFile(filepath.Join(root, "var/lib/nodetrust/state.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &record))
	for p := range snapshot(t, root) {
		if strings.HasPrefix(filepath.Base(p), "nodetrust_") {
			require.Contains(t, record.Files, p, "every nodetrust file on disk is in the record")
		}
	}
	mustApply(t, root, writeManifests(t, nil))
	h.checkClean(t, root)
}

// TestNameTooLong: a Secret name Kubernetes accepts (250 characters) makes
// a file name the kernel refuses. The apply fails for it alone; hosts.toml
// never names the missing file.
func TestNameTooLong(t *testing.T) {
	h := newHost(t, "reg.example:5000")
	good := source{"good", []string{"reg.example:5000", "new.example"}, newCAPEM(t, "good")}
	long := source{strings.Repeat("l", 250), []string{"reg.example:5000", "new.example"}, newCAPEM(t, "long")}
	root := copyTree(t, h.dir)
	both := writeManifests(t, []source{good, long})
	for range 2 { // and again: stable
		res := apply(t, root, both)
		require.Equal(t, 1, res.code, res.stdout+res.stderr)
		require.Contains(t, res.stdout, "file name too long")
		h.checkConverged(t, root, []source{good})
	}
	mustApply(t, root, writeManifests(t, []source{good}))
	h.checkConverged(t, root, []source{good})
	mustApply(t, root, writeManifests(t, nil))
	h.checkClean(t, root)
}

// TestFullDisk runs itself again in a private mount namespace (unshare -m)
// with tmpfs mounts filled to the byte: etc/containerd, where CA files and
// hosts.toml go, then var/lib/nodetrust, where the record goes.
func TestFullDisk(t *testing.T) {
	if os.Getenv("NODETRUST_FAULTS_NS") == "" {
		bin(t)
		if os.Geteuid() != 0 {
			t.Skip("mounting a tmpfs needs root")
		}
		cmd := exec.Command("unshare", "-m", "--propagation", "private", os.Args[0], "-test.run=^TestFullDisk$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "NODETRUST_FAULTS_NS=1")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		return
	}
	h := newHost(t)
	root := copyTree(t, h.dir)
	containerd := filepath.Join(root, "etc/containerd")
	state := filepath.Join(root, "var/lib/nodetrust")
	saved := filepath.Join(root, "containerd.saved")
	require.NoError(t, os.Rename(containerd, saved))
	for _, d := range []string{containerd, state} {
		require.NoError(t, os.Mkdir(d, 0o755))
		require.NoError(t, syscall.Mount("tmpfs", d, "tmpfs", 0, "size=1m,mode=0755"))
		t.Cleanup(func() { _ = syscall.Unmount(d, syscall.MNT_DETACH) })
	}
	require.NoError(t, exec.Command("cp", "-a", saved+"/.", containerd).Run())
	require.NoError(t, os.RemoveAll(saved))
	h.pristine = snapshot(t, root) // with the mount points

	a := source{"a", []string{"reg.example:5000"}, newCAPEM(t, "a")}
	b := source{"b", []string{"reg.example:5000", "new.example"}, newCAPEM(t, "b")}
	both := writeManifests(t, []source{a, b})
	mustApply(t, root, writeManifests(t, []source{a}))

	unfill := fill(t, containerd)
	res := apply(t, root, both, "--output", "json")
	require.Equal(t, 1, res.code, res.stdout+res.stderr)
	rep := report(t, res.stdout)
	require.NotEmpty(t, rep.Failed)
	require.Contains(t, strings.Join(rep.Failed, "\n"), "no space left on device")
	require.Equal(t, []string{a.caFile()}, nodetrustOnly(hostsCAs(t, root, "etc/containerd/certs.d/reg.example:5000")), "names only the CA written")
	checkNamedExist(t, root)
	require.NoFileExists(t, filepath.Join(containerd, "certs.d/new.example/hosts.toml"), "a hosts.toml naming nothing written is not written")
	unfill()

	unfill = fill(t, state)
	res = apply(t, root, both, "--output", "json")
	require.Equal(t, 1, res.code, res.stdout+res.stderr)
	require.Contains(t, res.stderr, "ownership record not saved")
	report(t, res.stdout) // printed all the same
	checkNamedExist(t, root)
	unfill()

	mustApply(t, root, both)
	h.checkConverged(t, root, []source{a, b})
	mustApply(t, root, writeManifests(t, nil))
	h.checkClean(t, root)
}

// jsonReport is the part of apply --output json the suite reads.
type jsonReport struct {
	OK      bool     `json:"ok"`
	Written []string `json:"written"`
	Failed  []string `json:"failed"`
}

func report(t *testing.T, stdout string) jsonReport {
	t.Helper()
	var rep jsonReport
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep), "apply --output json printed its report: %q", stdout)
	require.False(t, rep.OK)
	return rep
}

// fill fills the filesystem of dir to the byte with a file, and returns
// what removes it.
func fill(t *testing.T, dir string) func() {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	require.NoError(t, err)
	defer f.Close()
	for _, size := range []int{1 << 16, 4096, 1} {
		buf := make([]byte, size)
		for {
			if _, err := f.Write(buf); err != nil {
				require.True(t, errors.Is(err, syscall.ENOSPC), "%v", err)
				break
			}
		}
	}
	var st syscall.Statfs_t
	require.NoError(t, syscall.Statfs(dir, &st))
	require.Zero(t, st.Bavail, "full")
	return func() { require.NoError(t, os.Remove(p)) }
}

// TestAgentAndApply: an operator's apply on a node whose agent (here with
// --source-dir) applies another set. The two never write at once; the
// agent puts its own set back, and ownership is never lost: every
// nodetrust file on disk is in the record, and removing everything after
// the agent stopped gives the pristine host.
func TestAgentAndApply(t *testing.T) {
	h := newHost(t, "r0.example:5000")
	var setA, setB []source
	for i := range 100 {
		setA = append(setA, source{fmt.Sprintf("a%03d", i), []string{fmt.Sprintf("r%d.example:5000", i%10)}, newCAPEM(t, "a")})
		setB = append(setB, source{fmt.Sprintf("b%03d", i), []string{fmt.Sprintf("r%d.example:5000", i%10)}, newCAPEM(t, "b")})
	}
	root := copyTree(t, h.dir)
	var log bytes.Buffer
	agent := exec.Command(bin(t), "agent", "--source-dir", writeManifests(t, setA), "--host-root", root,
		"--health-addr", "127.0.0.1:0", "--resync", "2s")
	agent.Stdout, agent.Stderr = &log, &log
	require.NoError(t, agent.Start())
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = agent.Process.Kill()
			_ = agent.Wait()
		}
	})
	want := filesOf(setA)
	require.Eventually(t, func() bool { return equal(nodetrustFiles(t, root), want) }, 20*time.Second, 20*time.Millisecond, "the agent applies its set")

	res := apply(t, root, writeManifests(t, setB))
	require.Equal(t, 0, res.code, res.stdout+res.stderr)
	require.Eventually(t, func() bool { return equal(nodetrustFiles(t, root), want) }, 20*time.Second, 20*time.Millisecond, "the agent puts its set back")
	require.NoError(t, agent.Process.Signal(syscall.SIGTERM))
	require.NoError(t, agent.Wait(), log.String())
	stopped = true

	h.checkConverged(t, root, setA)
	var record struct{ Files map[string]any }
	data, err := os.ReadFile(filepath.Join(root, "var/lib/nodetrust/state.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &record))
	for _, p := range nodetrustFiles(t, root) {
		require.Contains(t, record.Files, p, "every nodetrust file on disk is in the record")
	}
	mustApply(t, root, writeManifests(t, nil))
	h.checkClean(t, root)
}

// nodetrustFiles lists the nodetrust_* files below root, sorted, while
// something may be writing there.
func nodetrustFiles(t testing.TB, root string) []string {
	var out []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), "nodetrust_") {
			rel, _ := filepath.Rel(root, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// filesOf lists the CA files a set installs with containerd and Docker, sorted.
func filesOf(set []source) []string {
	var out []string
	for _, s := range set {
		for _, r := range s.registries {
			out = append(out, "etc/containerd/certs.d/"+r+"/"+s.caFile(), "etc/docker/certs.d/"+r+"/"+s.caFile())
		}
	}
	sort.Strings(out)
	return out
}

func equal(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

// flockHeldBy reports whether /proc/locks shows pid holding an flock on the
// file at p (the lock file names no holder: it is never written).
func flockHeldBy(t *testing.T, p string, pid int) bool {
	var st syscall.Stat_t
	if syscall.Stat(p, &st) != nil {
		return false
	}
	data, err := os.ReadFile("/proc/locks")
	require.NoError(t, err)
	major := (st.Dev>>8)&0xfff | (st.Dev>>32)&^uint64(0xfff) // as unix.Major
	minor := st.Dev&0xff | (st.Dev>>12)&^uint64(0xff)
	dev := fmt.Sprintf("%02x:%02x:%d", major, minor, st.Ino)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[1] == "FLOCK" && f[4] == strconv.Itoa(pid) && f[5] == dev {
			return true
		}
	}
	return false
}
