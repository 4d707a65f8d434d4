package agent_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/cluster"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
)

// fakeVerifier answers from a table and counts calls per registry.
type fakeVerifier struct {
	mu          sync.Mutex
	failing     map[string]string // registry → reason
	unreachable map[string]bool
	expiry      time.Time
	calls       map[string]int
}

func (f *fakeVerifier) Verify(_ context.Context, reg string) agent.Verification {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[reg]++
	reason, bad := f.failing[reg]
	return agent.Verification{OK: !bad, Reason: reason, LeafNotAfter: f.expiry, Unreachable: bad && f.unreachable[reg]}
}

func (f *fakeVerifier) count(reg string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[reg]
}

func startVerifying(t *testing.T, v *fakeVerifier, interval time.Duration) *env {
	t.Helper()
	dir := t.TempDir()
	hostfstest.MkdirAll(t, dir, "etc/docker", "etc/containerd")
	return startWith(t, dir, func(o *agent.Options) { o.Verifier, o.VerifyInterval = v, interval },
		testNode(nil), caSecret(t, "a", "good.example:5000, bad.example", nil), caSecret(t, "b", "good.example:5000", nil))
}

func TestAgentVerifiesRegistries(t *testing.T) {
	v := &fakeVerifier{
		failing: map[string]string{"bad.example": "containerd: unknown-authority: the labelled CA did not sign this chain: issuer is CN=x"},
		expiry:  time.Now().Add(time.Hour), calls: map[string]int{},
	}
	e := startVerifying(t, v, time.Hour)
	e.eventually(func() bool { return e.annotations()[annotation.KeyState] != "" }, "annotated")
	ann := e.annotations()
	require.Equal(t, annotation.StateDegraded, ann[annotation.KeyState])
	require.Equal(t, "registry bad.example not verified: containerd: unknown-authority: the labelled CA did not sign this chain: issuer is CN=x", ann[annotation.KeyMessage])
	require.Equal(t, "2", ann[annotation.KeySources], "the files are applied all the same")
	require.Equal(t, 1, v.count("good.example:5000"), "once per registry, not per source")
	require.Equal(t, 1, v.count("bad.example"))

	require.Equal(t, "good.example:5000", ann[annotation.KeyVerified])
	require.Equal(t, "bad.example", ann[annotation.KeyUnverified])
	e.eventually(func() bool { return e.actions("create", "events") == 1 }, "one Event")
	evs, err := e.client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
	require.Len(t, evs.Items, 1, "on the one source that names bad.example")
	require.Equal(t, cluster.EventReasonNotVerified, evs.Items[0].Reason)
	require.Equal(t, "a", evs.Items[0].InvolvedObject.Name)
	require.Contains(t, evs.Items[0].Message, "registry bad.example does not verify: containerd: unknown-authority")

	m := metricsText(t, e.agent)
	require.Contains(t, m, "nodetrust_registry_verified{registry=\"bad.example\"} 0\n")
	require.Contains(t, m, "nodetrust_registry_verified{registry=\"good.example:5000\"} 1\n")
	require.Contains(t, m, "nodetrust_registry_cert_expiry_seconds{registry=\"good.example:5000\"} 3")

	e.agent.Trigger() // a sync without a change does not verify again
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, 1, v.count("bad.example"))
	require.Equal(t, 1, e.actions("create", "events"), "nor emits again")

	// A change re-verifies the registries whose sources changed, not the
	// others (the interval does): deleting b changes good.example:5000 only.
	err = e.client.CoreV1().Secrets(ns).Delete(context.Background(), "b", metav1.DeleteOptions{})
	require.NoError(t, err)
	e.eventually(func() bool { return v.count("good.example:5000") == 2 }, "the changed registry verifies again")
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, 1, v.count("bad.example"), "an unchanged registry keeps its result")

	// A new CA for bad.example's source re-verifies it.
	v.mu.Lock()
	delete(v.failing, "bad.example")
	v.mu.Unlock()
	a := caSecret(t, "a", "good.example:5000, bad.example", nil)
	_, err = e.client.CoreV1().Secrets(ns).Update(context.Background(), a, metav1.UpdateOptions{})
	require.NoError(t, err)
	e.eventually(func() bool { return e.annotations()[annotation.KeyState] == annotation.StateReady }, "a changed source verifies its registries again")
	require.Equal(t, 2, v.count("bad.example"))
	require.Empty(t, e.annotations()[annotation.KeyMessage])
}

func TestAgentVerifiesPeriodically(t *testing.T) {
	v := &fakeVerifier{failing: map[string]string{}, calls: map[string]int{}}
	e := startVerifying(t, v, 30*time.Millisecond)
	e.eventually(func() bool { return v.count("bad.example") >= 3 }, "verified again every interval")
	require.Equal(t, annotation.StateReady, e.annotations()[annotation.KeyState])
	require.NotContains(t, metricsText(t, e.agent), "nodetrust_registry_cert_expiry_seconds{", "no serving certificate seen")
}

func TestAgentWithoutVerifier(t *testing.T) {
	e := start(t, testNode(nil), caSecret(t, "a", "bad.example", nil))
	e.eventually(func() bool { return e.annotations()[annotation.KeyState] == annotation.StateReady }, "ready")
	require.False(t, strings.Contains(metricsText(t, e.agent), "nodetrust_registry_verified"))
}

// A registry that cannot be reached says nothing about this node's trust:
// logged and in the metric, the node stays Ready.
func TestAgentUnreachableRegistryIsNotDegraded(t *testing.T) {
	v := &fakeVerifier{
		failing:     map[string]string{"bad.example": "containerd: dns-failure: no such host"},
		unreachable: map[string]bool{"bad.example": true},
		calls:       map[string]int{},
	}
	e := startVerifying(t, v, time.Hour)
	e.eventually(func() bool { return e.annotations()[annotation.KeyState] != "" }, "annotated")
	require.Equal(t, annotation.StateReady, e.annotations()[annotation.KeyState])
	require.Empty(t, e.annotations()[annotation.KeyMessage])
	require.Contains(t, metricsText(t, e.agent), "nodetrust_registry_verified{registry=\"bad.example\"} 0\n")
}
