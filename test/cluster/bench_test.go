package cluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestBenchPropagation measures, against the real API server, the time from
// one Secret write to the CA file being in place on every node, with N
// agents each with its own process, API client, watch, Node and host root.
// It prints a table; it asserts only that every node converges. Run with
// NODETRUST_BENCH=1 (make bench-cluster).
func TestBenchPropagation(t *testing.T) {
	harness.SkipUnlessReal(t)
	if os.Getenv("NODETRUST_BENCH") != "1" {
		t.Skip("set NODETRUST_BENCH=1 to run the propagation benchmark")
	}
	var rows []string
	for _, n := range []int{1, 10, 100} {
		rows = append(rows, benchN(t, n)...)
	}
	rss := benchRSS(t, 100)
	fmt.Printf("\n| agents | step | p50 | p99 | max | API requests per agent |\n|---|---|---|---|---|---|\n%s\n", strings.Join(rows, "\n"))
	fmt.Printf("\nRSS of one agent with 100 sources applied: %.1f MiB\n", rss)
}

// deployedCluster is a fresh cluster with deploy/ applied.
func deployedCluster(t *testing.T) *harness.Cluster {
	c := harness.NewCluster(t)
	if out, err := c.ApplyDeploy(); err != nil {
		t.Fatalf("kubectl apply -k deploy/: %v\n%s", err, out)
	}
	return c
}

func benchN(t *testing.T, n int) []string {
	c := deployedCluster(t)
	ns := harness.AgentNamespace
	kcfg := c.AgentKubeconfig(t, t.TempDir())
	roots := make([]string, n)
	agents := make([]*harness.Agent, n)
	before := apiRequests(t, c)
	for i := range n {
		node := fmt.Sprintf("bench-%d-%03d", n, i)
		c.CreateNode(t, node, nil)
		roots[i] = harness.NewHostRoot(t)
		agents[i] = harness.StartAgent(t, harness.AgentOptions{Kubeconfig: kcfg, Node: node, Namespaces: ns, Root: roots[i], Extra: []string{"--resync", "2s"}})
	}
	for _, a := range agents {
		a.WaitReady(t, 120*time.Second)
	}
	time.Sleep(3 * time.Second) // let first-sync patches land
	atStart := apiRequests(t, c)
	startCost := float64(atStart-before) / float64(n)

	name := "bench-ca"
	file := filepath.Join("etc/docker/certs.d/registry.bench.test:5000", "nodetrust_secret_"+ns+"_"+name+".crt")
	w := newArrival(t, roots, file)
	ca := harness.NewCA("bench CA 1").PEM
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
		Labels: map[string]string{"nodetrust.io/ca": "true"}, Annotations: map[string]string{"nodetrust.io/registries": "registry.bench.test:5000"}},
		Data: map[string][]byte{"ca.crt": ca}}
	w.expect(ca)
	t0 := time.Now()
	if _, err := c.Admin.CoreV1().Secrets(ns).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	created := w.wait(t, t0, 60*time.Second)
	time.Sleep(2 * time.Second)
	afterCreate := apiRequests(t, c)

	rotated := harness.NewCA("bench CA 2").PEM
	s.Data["ca.crt"] = rotated
	w.expect(rotated)
	t1 := time.Now()
	if _, err := c.Admin.CoreV1().Secrets(ns).Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rotatedLat := w.wait(t, t1, 60*time.Second)
	time.Sleep(2 * time.Second)
	afterRotate := apiRequests(t, c)

	// Idle: several 2 s resyncs with nothing changed must write and patch nothing.
	written, patches := agentCounters(t, agents)
	time.Sleep(5 * time.Second)
	written2, patches2 := agentCounters(t, agents)
	if written2 != written || patches2 != patches {
		t.Errorf("N=%d: idle resyncs wrote %v files and patched %v times, want 0 and 0", n, written2-written, patches2-patches)
	}
	for _, a := range agents { // free their watches and inotify instances
		a.Stop()
	}
	return []string{
		row(n, "agent start to ready", nil, startCost),
		row(n, "Secret create → file on every node", created, float64(afterCreate-atStart-1)/float64(n)),
		row(n, "CA rotation → new file on every node", rotatedLat, float64(afterRotate-afterCreate-1)/float64(n)),
		fmt.Sprintf("| %d | idle resyncs (5 s, --resync 2s) | files written %v | node patches %v | | |", n, written2-written, patches2-patches),
	}
}

// benchRSS applies count sources on one agent and reads its resident memory.
func benchRSS(t *testing.T, count int) float64 {
	c := deployedCluster(t)
	ns := harness.AgentNamespace
	c.CreateNode(t, "rss", nil)
	a := harness.StartAgent(t, harness.AgentOptions{Kubeconfig: c.AgentKubeconfig(t, t.TempDir()), Node: "rss", Namespaces: ns, Root: harness.NewHostRoot(t)})
	a.WaitReady(t, 30*time.Second)
	for i := range count {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("rss-%03d", i), Namespace: ns,
			Labels: map[string]string{"nodetrust.io/ca": "true"}, Annotations: map[string]string{"nodetrust.io/registries": fmt.Sprintf("r%03d.bench.test", i)}},
			Data: map[string][]byte{"ca.crt": harness.NewCA(fmt.Sprintf("rss %d", i)).PEM}}
		if _, err := c.Admin.CoreV1().Secrets(ns).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if !harness.Poll(60*time.Second, 100*time.Millisecond, func() bool {
		m, _, err := a.Metrics()
		return err == nil && m["nodetrust_sources_applied"] == float64(count)
	}) {
		t.Fatalf("agent did not apply %d sources", count)
	}
	time.Sleep(2 * time.Second)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.Proc.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func row(n int, step string, lat []time.Duration, perAgent float64) string {
	if lat == nil {
		return fmt.Sprintf("| %d | %s | | | | %.1f |", n, step, perAgent)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1)+0.5)].Round(time.Millisecond) }
	return fmt.Sprintf("| %d | %s | %v | %v | %v | %.1f |", n, step, q(0.5), q(0.99), lat[len(lat)-1].Round(time.Millisecond), perAgent)
}

// apiRequests sums the API server's request counter for the resources the
// agent uses.
func apiRequests(t *testing.T, c *harness.Cluster) int {
	body, err := c.Admin.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		for _, res := range []string{`resource="secrets"`, `resource="configmaps"`, `resource="nodes"`, `resource="events"`} {
			if strings.Contains(line, res) {
				v, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
				total += v
			}
		}
	}
	return int(total)
}

func agentCounters(t *testing.T, agents []*harness.Agent) (written, patches float64) {
	for _, a := range agents {
		m, _, err := a.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		written += m["nodetrust_files_written_total"]
		patches += m["nodetrust_node_patches_total"]
	}
	return written, patches
}

// arrival records when a file with the expected content appears in each
// root, from inotify events rather than polling, so measuring does not
// compete with the agents for the two cores.
type arrival struct {
	mu    sync.Mutex
	roots []string
	file  string
	want  []byte
	seen  map[int]time.Time
	w     *fsnotify.Watcher
	dirOf map[string]int
}

func newArrival(t *testing.T, roots []string, file string) *arrival {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	a := &arrival{roots: roots, file: file, w: w, dirOf: map[string]int{}}
	for i, r := range roots {
		// Watch every level that will appear, created beforehand: certs.d
		// and the registry directory are then pre-existing, which the
		// agent leaves in place.
		dir := filepath.Join(r, filepath.Dir(file))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := w.Add(dir); err != nil {
			t.Fatal(err)
		}
		a.dirOf[dir] = i
	}
	go func() {
		for ev := range w.Events {
			if i, ok := a.dirOf[filepath.Dir(ev.Name)]; ok && filepath.Base(ev.Name) == filepath.Base(file) {
				a.check(i)
			}
		}
	}()
	return a
}

func (a *arrival) expect(want []byte) {
	a.mu.Lock()
	a.want, a.seen = want, map[int]time.Time{}
	a.mu.Unlock()
}

func (a *arrival) check(i int) {
	now := time.Now()
	data, err := os.ReadFile(filepath.Join(a.roots[i], a.file))
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, done := a.seen[i]; !done && err == nil && bytes.Equal(data, a.want) {
		a.seen[i] = now
	}
}

func (a *arrival) wait(t *testing.T, t0 time.Time, timeout time.Duration) []time.Duration {
	ok := harness.Poll(timeout, 20*time.Millisecond, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.seen) == len(a.roots)
	})
	a.mu.Lock()
	defer a.mu.Unlock()
	if !ok {
		t.Fatalf("only %d of %d nodes got the file", len(a.seen), len(a.roots))
	}
	out := make([]time.Duration, 0, len(a.seen))
	for _, at := range a.seen {
		out = append(out, at.Sub(t0))
	}
	return out
}
