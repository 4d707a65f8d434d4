package faults

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// injected are the system calls nodetrust apply writes with, as `strace
// -c` of a run lists them: every open (openat2 below the host root,
// openat for temp files and the lock), each part of a durable write and
// of a removal.
var injected = []string{"openat2", "openat", "mkdirat", "write", "pwrite64", "ftruncate", "fchown", "fchmod", "syncfs", "renameat", "unlinkat"}

// phase is one apply that is killed: from the state after applying from
// (pristine when nil) to sources to.
type phase struct {
	name     string
	from, to []source
}

// stats count the cases of one scenario.
type stats struct {
	mu            sync.Mutex
	cases, killed int
	indexes       map[string]int // syscall → indexes tried
	killedBy      map[string]int
}

func (s *stats) add(sc string, killed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cases++
	s.indexes[sc]++
	if killed {
		s.killed++
		s.killedBy[sc]++
	}
}

func (s *stats) String() string {
	var parts []string
	for _, sc := range injected {
		if s.indexes[sc] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d/%d", sc, s.killedBy[sc], s.indexes[sc]))
		}
	}
	return fmt.Sprintf("%d cases, %d killed, all converged (killed/tried per syscall: %s)", s.cases, s.killed, strings.Join(parts, ", "))
}

// TestKillMerge kills apply at every index of every write system call
// during a merge into an operator's hosts.toml, an update, and the
// restore.
func TestKillMerge(t *testing.T) {
	a := source{"a", []string{"reg.example:5000", "new.example"}, newCAPEM(t, "a")}
	b := source{"b", []string{"reg.example:5000"}, newCAPEM(t, "b")}
	b2 := source{"b", []string{"reg.example:5000"}, newCAPEM(t, "b2")}
	c := source{"c", []string{"reg.example:5000", "new.example"}, newCAPEM(t, "c")}
	killPhases(t, newHost(t, "reg.example:5000"), 0, []phase{
		{name: "install", to: []source{a, b}},
		{name: "update", from: []source{a, b}, to: []source{b2, c}},
		{name: "remove", from: []source{b2, c}},
	})
}

// TestKill200 kills apply at sampled indexes of every write system call
// while it installs and while it removes 200 sources (400 CA files and
// 10 hosts.toml, one merged into an operator's).
func TestKill200(t *testing.T) {
	var set []source
	for i := range 200 {
		set = append(set, source{fmt.Sprintf("s%03d", i), []string{fmt.Sprintf("r%d.example:5000", i%10)}, newCAPEM(t, "s")})
	}
	samples := 12
	if v := os.Getenv("NODETRUST_FAULTS_SAMPLES"); v != "" {
		var err error
		samples, err = strconv.Atoi(v)
		require.NoError(t, err)
	}
	killPhases(t, newHost(t, "r0.example:5000"), samples, []phase{
		{name: "install", to: set},
		{name: "remove", from: set},
	})
}

// killPhases runs every phase's apply once under strace -c to count each
// injected system call, then, for each index (all of them, or samples
// evenly spread), kills it there, reruns it, and removes everything,
// checking the host after each step.
func killPhases(t *testing.T, h *host, samples int, phases []phase) {
	bin(t)
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace is not installed (Debian: apt-get install strace)")
	}
	start := time.Now()
	st := &stats{indexes: map[string]int{}, killedBy: map[string]int{}}
	empty := writeManifests(t, nil)
	t.Run("cases", func(t *testing.T) {
		for _, ph := range phases {
			from := h.dir
			if ph.from != nil {
				from = copyTree(t, h.dir)
				mustApply(t, from, writeManifests(t, ph.from))
			}
			to := empty
			if ph.to != nil {
				to = writeManifests(t, ph.to)
			}
			for sc, n := range countCalls(t, from, to) {
				for _, i := range indexes(n, samples) {
					t.Run(fmt.Sprintf("%s/%s=%d", ph.name, sc, i), func(t *testing.T) {
						t.Parallel()
						root := copyTree(t, from)
						res := run(t, exec.Command("strace", "-f", "-o", "/dev/null", "-e", "trace="+sc,
							"-e", fmt.Sprintf("inject=%s:signal=SIGKILL:when=%d", sc, i), bin(t), "apply", "-f", to, "--host-root", root))
						if !res.killed() {
							require.Equal(t, 0, res.code, "an apply not killed succeeds: %s%s", res.stdout, res.stderr)
						}
						checkNamedExist(t, root) // even right after the kill
						h.checkContainerdBetween(t, root, ph.from, ph.to)
						mustApply(t, root, to)
						h.checkConverged(t, root, ph.to)
						mustApply(t, root, empty)
						h.checkClean(t, root)
						st.add(sc, res.killed())
					})
				}
			}
		}
	})
	if !t.Failed() {
		fmt.Printf("%s: %s, in %s\n", t.Name(), st, time.Since(start).Round(time.Second))
	}
}

// countCalls runs the apply from a copy of root once under strace -c and
// returns how often it made each injected system call.
func countCalls(t *testing.T, root, manifests string) map[string]int {
	t.Helper()
	out := filepath.Join(t.TempDir(), "count")
	res := run(t, exec.Command("strace", "-f", "-c", "-o", out, "-e", "trace="+strings.Join(injected, ","),
		bin(t), "apply", "-f", manifests, "--host-root", copyTree(t, root)))
	require.Equal(t, 0, res.code, res.stderr)
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	counts := map[string]int{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !contains(injected, f[len(f)-1]) {
			continue
		}
		n, err := strconv.Atoi(f[3])
		require.NoError(t, err, line)
		counts[f[len(f)-1]] = n
	}
	require.NotZero(t, counts["renameat"], "strace -c output:\n%s", data)
	return counts
}

// indexes returns 1..n, or with samples > 0 and n larger, samples indexes
// spread evenly from 1 to n.
func indexes(n, samples int) []int {
	var out []int
	if samples <= 0 || n <= samples {
		for i := 1; i <= n; i++ {
			out = append(out, i)
		}
		return out
	}
	seen := map[int]bool{}
	for k := range samples {
		i := 1 + k*(n-1)/(samples-1)
		if !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	sort.Ints(out)
	return out
}
