package agent_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/cluster"
	"github.com/nodetrust/nodetrust/pkg/cluster/clustertest"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/source"
)

const ns = "nodetrust-system"

func caSecret(t *testing.T, name, registries string, extra map[string]string) *corev1.Secret {
	ann := map[string]string{source.AnnotationRegistries: registries}
	for k, v := range extra {
		ann[k] = v
	}
	ca := certstest.NewCA(t, name)
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), Labels: map[string]string{source.LabelCA: "true"}, Annotations: ann},
		Data:       map[string][]byte{"tls.crt": ca.CertPEM(), "tls.key": ca.KeyPEM(t)},
	}
}

func testNode(labels map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: labels}}
}

type env struct {
	t      *testing.T
	client *fake.Clientset
	dir    string
	agent  *agent.Agent
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, objs ...runtime.Object) *env {
	t.Helper()
	dir := t.TempDir()
	hostfstest.MkdirAll(t, dir, "etc/docker", "etc/containerd")
	return startOn(t, dir, objs...)
}

// startOn runs an agent with a fresh fake API holding objs on the host root dir.
func startOn(t *testing.T, dir string, objs ...runtime.Object) *env {
	t.Helper()
	return startWith(t, dir, nil, objs...)
}

// startWith is startOn with options changed by opts (when not nil).
func startWith(t *testing.T, dir string, opts func(*agent.Options), objs ...runtime.Object) *env {
	t.Helper()
	e := &env{t: t, client: fake.NewClientset(objs...), dir: dir, done: make(chan error, 1)}
	root, err := hostfs.Open(e.dir)
	require.NoError(t, err)
	t.Cleanup(func() { root.Close() })
	k := cluster.New(clustertest.API{Client: e.client}, "n1", []string{ns})
	o := agent.Options{Root: root, Inputs: k, Publisher: k, Resync: time.Hour, Retry: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if opts != nil {
		opts(&o)
	}
	e.agent = agent.New(o)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- e.agent.Run(ctx) }()
	t.Cleanup(e.stop)
	return e
}

func (e *env) stop() {
	if e.cancel != nil {
		e.cancel()
		require.NoError(e.t, <-e.done)
		e.cancel = nil
	}
}

func (e *env) file(rel string) string {
	data, err := os.ReadFile(filepath.Join(e.dir, rel))
	if err != nil {
		return ""
	}
	return string(data)
}

func (e *env) eventually(cond func() bool, msg string) {
	e.t.Helper()
	require.Eventually(e.t, cond, 5*time.Second, 10*time.Millisecond, msg)
}

func (e *env) annotations() map[string]string {
	n, err := e.client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
	require.NoError(e.t, err)
	return n.Annotations
}

func (e *env) actions(verb, resource string) int {
	n := 0
	for _, a := range e.client.Actions() {
		if a.GetVerb() == verb && a.GetResource().Resource == resource {
			n++
		}
	}
	return n
}

const dockerFile = "etc/docker/certs.d/r.example:5000/nodetrust_secret_nodetrust-system_a.crt"

func TestAgentAppliesUpdatesAndRemoves(t *testing.T) {
	e := start(t, testNode(nil))
	ctx := context.Background()
	// The fake clientset, unlike the API server, cannot resume a watch from
	// the list's resourceVersion: create only once the watch is running.
	e.eventually(func() bool { return e.actions("watch", "secrets") > 0 }, "watching")
	time.Sleep(50 * time.Millisecond)

	a := caSecret(t, "a", "r.example:5000", nil)
	_, err := e.client.CoreV1().Secrets(ns).Create(ctx, a, metav1.CreateOptions{})
	require.NoError(t, err)
	e.eventually(func() bool { return e.file(dockerFile) == string(a.Data["tls.crt"]) }, "applied")
	e.eventually(func() bool { return e.annotations()[annotation.KeySources] == "1" }, "annotated")
	ann := e.annotations()
	require.Equal(t, annotation.StateReady, ann[annotation.KeyState])
	require.Equal(t, "", ann[annotation.KeyMessage])
	require.Len(t, ann[annotation.KeyApplied], 12)
	_, err = time.Parse(time.RFC3339, ann[annotation.KeySyncedAt])
	require.NoError(t, err)
	require.True(t, e.agent.Ready())
	require.NotContains(t, e.file("etc/containerd/certs.d/r.example:5000/hosts.toml"), "PRIVATE")

	rotated := caSecret(t, "a", "r.example:5000", nil)
	_, err = e.client.CoreV1().Secrets(ns).Update(ctx, rotated, metav1.UpdateOptions{})
	require.NoError(t, err)
	e.eventually(func() bool { return e.file(dockerFile) == string(rotated.Data["tls.crt"]) }, "rotated")

	unlabelled := rotated.DeepCopy()
	unlabelled.Labels = nil
	_, err = e.client.CoreV1().Secrets(ns).Update(ctx, unlabelled, metav1.UpdateOptions{})
	require.NoError(t, err)
	// The fake clientset does not filter watches by label selector as the API
	// server does; the agent's own label check must drop the source.
	e.eventually(func() bool { return e.file(dockerFile) == "" }, "removed when unlabelled")
	e.eventually(func() bool { return e.annotations()[annotation.KeySources] == "0" }, "count updated")
}

func TestAgentRejectedSourceDegradesAndEmitsOneEvent(t *testing.T) {
	good := caSecret(t, "a", "r.example:5000", nil)
	bad := caSecret(t, "bad", "r.example/../x", nil)
	e := start(t, testNode(nil), good, bad)
	e.eventually(func() bool { return e.annotations()[annotation.KeyState] == annotation.StateDegraded }, "degraded")
	require.Contains(t, e.annotations()[annotation.KeyMessage], "Secret nodetrust-system/bad: annotation nodetrust.io/registries")
	require.Equal(t, string(good.Data["tls.crt"]), e.file(dockerFile), "the good source still applies")
	require.True(t, e.agent.Ready(), "a rejected source does not hold back readiness")

	events, err := e.client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
	require.Len(t, events.Items, 1)
	ev := events.Items[0]
	require.Equal(t, cluster.EventReason, ev.Reason)
	require.Equal(t, corev1.EventTypeWarning, ev.Type)
	require.Equal(t, "Secret", ev.InvolvedObject.Kind)
	require.Equal(t, "bad", ev.InvolvedObject.Name)
	require.Equal(t, "uid-bad", string(ev.InvolvedObject.UID))

	// More syncs (a Node label change triggers one): no second Event, no patch.
	e.eventually(func() bool { return e.condition() != nil }, "the condition is published too")
	patches := e.actions("patch", "nodes")
	syncs := metricValue(t, e.agent, "nodetrust_syncs_total")
	n := testNode(map[string]string{"x": "y"})
	n.Annotations = e.annotations()
	_, err = e.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{})
	require.NoError(t, err)
	e.eventually(func() bool { return metricValue(t, e.agent, "nodetrust_syncs_total") > syncs }, "another sync")
	require.Equal(t, 1, e.actions("create", "events"))
	require.Equal(t, patches, e.actions("patch", "nodes"))
}

func TestAgentNodeSelector(t *testing.T) {
	gpu := caSecret(t, "a", "r.example:5000", map[string]string{source.AnnotationNodeSelector: "pool=gpu"})
	e := start(t, testNode(map[string]string{"pool": "cpu"}), gpu)
	e.eventually(e.agent.Ready, "ready")
	require.Empty(t, e.file(dockerFile))

	_, err := e.client.CoreV1().Nodes().Update(context.Background(), testNode(map[string]string{"pool": "gpu"}), metav1.UpdateOptions{})
	require.NoError(t, err)
	e.eventually(func() bool { return e.file(dockerFile) != "" }, "applied when the node's labels match")
}

func TestAgentRestartIsQuiet(t *testing.T) {
	a := caSecret(t, "a", "r.example:5000", nil)
	e := start(t, testNode(nil), a)
	e.eventually(func() bool { return e.annotations()[annotation.KeySources] == "1" }, "applied")
	e.stop()
	mtimes := hostfstest.ModTimes(t, e.dir)
	n, err := e.client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
	require.NoError(t, err)

	e2 := startOn(t, e.dir, n, a)
	e2.eventually(e2.agent.Ready, "ready after its first sync")
	e2.stop()
	require.Equal(t, mtimes, hostfstest.ModTimes(t, e.dir), "no file written")
	require.Zero(t, e2.actions("patch", "nodes"), "no patch")
	require.Contains(t, metricsText(t, e2.agent), "nodetrust_files_written_total 0")
}

func TestAgentDriftRestored(t *testing.T) {
	a := caSecret(t, "a", "r.example:5000", nil)
	e := start(t, testNode(nil), a)
	e.eventually(func() bool { return e.file(dockerFile) != "" }, "applied")
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, dockerFile), []byte("tampered"), 0o644))
	foreign := filepath.Join(filepath.Dir(filepath.Join(e.dir, dockerFile)), "theirs.crt")
	require.NoError(t, os.WriteFile(foreign, []byte("theirs"), 0o644))
	e.eventually(func() bool { return e.file(dockerFile) == string(a.Data["tls.crt"]) }, "edit restored")
	require.NoError(t, os.Remove(filepath.Join(e.dir, dockerFile)))
	e.eventually(func() bool { return e.file(dockerFile) == string(a.Data["tls.crt"]) }, "deletion restored")
	data, err := os.ReadFile(foreign)
	require.NoError(t, err)
	require.Equal(t, "theirs", string(data))
}

func TestHandler(t *testing.T) {
	e := start(t, testNode(nil), caSecret(t, "a", "r.example:5000", nil))
	srv := httptest.NewServer(e.agent.Handler())
	defer srv.Close()
	get := func(p string) (int, string) {
		resp, err := http.Get(srv.URL + p)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	code, _ := get("/healthz")
	require.Equal(t, 200, code)
	e.eventually(func() bool { return metricValue(t, e.agent, "nodetrust_sources_applied") == 1 }, "synced")
	code, _ = get("/readyz")
	require.Equal(t, 200, code)
	code, body := get("/metrics")
	require.Equal(t, 200, code)
	for _, m := range []string{"nodetrust_sync_failures_total 0", "nodetrust_sources_applied 1", "nodetrust_files_written_total 3",
		`nodetrust_ca_expiry_seconds{source="Secret nodetrust-system/a",sha256="`} {
		require.Contains(t, body, m)
	}
}

func TestReadyzBeforeFirstSync(t *testing.T) {
	a := agent.New(agent.Options{})
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
}

func TestStatusOf(t *testing.T) {
	require.Equal(t, annotation.Status{State: annotation.StateReady, Applied: "h"}, agent.StatusOf(reconcile.Report{Hash: "h"}))
	long := strings.Repeat("x ", 600)
	st := agent.StatusOf(reconcile.Report{Rejected: []*source.Rejection{{ID: source.ID{Kind: "Secret", Namespace: "a", Name: "b"}, Reason: "bad\nthing " + long}}})
	require.Equal(t, annotation.StateDegraded, st.State)
	require.True(t, strings.HasPrefix(st.Message, "1 problem(s): rejected Secret a/b: bad thing x x"))
	require.NotContains(t, st.Message, "\n")
	require.LessOrEqual(t, len(st.Message), 512)
}

func metricsText(t *testing.T, a *agent.Agent) string {
	var b bytes.Buffer
	_, err := a.Metrics().WriteTo(&b)
	require.NoError(t, err)
	return b.String()
}

// metricValue returns the value of an unlabelled metric.
func metricValue(t *testing.T, a *agent.Agent, name string) float64 {
	for _, line := range strings.Split(metricsText(t, a), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestAgentCountsWarnings(t *testing.T) {
	expired := certstest.Issue(t, certstest.Template{CommonName: "old", IsCA: true, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}, nil)
	s := caSecret(t, "old", "r.example:5000", nil)
	s.Data["tls.crt"] = expired.CertPEM()
	e := start(t, testNode(nil), s)
	// The expired CA, and no containerd config.toml to check config_path in.
	e.eventually(func() bool { return e.annotations()[annotation.KeyWarnings] == "2" }, "warnings counted in the Node's status")
	ann := e.annotations()
	require.Equal(t, annotation.StateReady, ann[annotation.KeyState], "a warning does not degrade")
	require.Empty(t, ann[annotation.KeyMessage])
	require.Equal(t, 2.0, metricValue(t, e.agent, "nodetrust_warnings"))
}
