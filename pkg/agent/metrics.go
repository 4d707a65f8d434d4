package agent

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/nodetrust/nodetrust/pkg/reconcile"
)

// Metrics are the agent's Prometheus metrics. They are few and fixed, so
// they are written in the text exposition format directly rather than
// through a client library.
type Metrics struct {
	mu             sync.Mutex
	syncs          uint64
	failures       uint64
	written        uint64
	removed        uint64
	patches        uint64
	events         uint64
	restarts       uint64
	lastSuccess    time.Time
	sourcesApplied int
	warnings       int
	expiry         map[[2]string]time.Time // (source, sha256) → NotAfter
	registries     []Verification          // the last verification, sorted by registry
}

func newMetrics() *Metrics { return &Metrics{expiry: map[[2]string]time.Time{}} }

func (m *Metrics) verifiedRegistries(results []Verification) {
	m.mu.Lock()
	m.registries = results
	m.mu.Unlock()
}

func (m *Metrics) synced(rep reconcile.Report, ok bool, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.syncs++
	if !ok {
		m.failures++
	} else {
		m.lastSuccess = now
	}
	m.written += uint64(len(rep.Written))
	m.removed += uint64(len(rep.Removed))
	m.sourcesApplied = len(rep.Applied)
	m.warnings = len(rep.Warnings) + len(rep.NodeWarnings)
	clear(m.expiry)
	for _, s := range rep.Applied {
		for _, c := range s.Certs {
			m.expiry[[2]string{s.ID.String(), c.SHA256}] = c.NotAfter
		}
	}
}

func (m *Metrics) syncFailed() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.syncs++
	m.failures++
}

func (m *Metrics) restarted() {
	m.mu.Lock()
	m.restarts++
	m.mu.Unlock()
}

func (m *Metrics) published(p Published) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.Patched {
		m.patches++
	}
	m.events += uint64(p.Events)
}

// WriteTo writes the metrics in the Prometheus text format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cw := &countWriter{w: w}
	metric := func(name, typ, help string, value any) {
		fmt.Fprintf(cw, "# HELP %s %s\n# TYPE %s %s\n%s %v\n", name, help, name, typ, name, value)
	}
	metric("nodetrust_syncs_total", "counter", "Syncs run.", m.syncs)
	metric("nodetrust_sync_failures_total", "counter", "Syncs that did not apply everything.", m.failures)
	metric("nodetrust_files_written_total", "counter", "Files written.", m.written)
	metric("nodetrust_files_removed_total", "counter", "Files removed or restored.", m.removed)
	metric("nodetrust_node_patches_total", "counter", "Patches of the Node's annotations.", m.patches)
	metric("nodetrust_events_total", "counter", "Kubernetes Events created.", m.events)
	metric("nodetrust_runtime_restarts_total", "counter", "Container runtime units restarted after trust store changes.", m.restarts)
	var last float64
	if !m.lastSuccess.IsZero() {
		last = float64(m.lastSuccess.UnixNano()) / 1e9
	}
	metric("nodetrust_last_success_timestamp_seconds", "gauge", "Time of the last sync that applied everything.", last)
	metric("nodetrust_sources_applied", "gauge", "Sources applied on this node.", m.sourcesApplied)
	metric("nodetrust_warnings", "gauge", "Warnings of the last sync (expired or mismatched certificates, unsupported host trust, ...).", m.warnings)

	fmt.Fprint(cw, "# HELP nodetrust_ca_expiry_seconds Seconds until an applied CA certificate expires (negative: expired).\n# TYPE nodetrust_ca_expiry_seconds gauge\n")
	keys := make([][2]string, 0, len(m.expiry))
	for k := range m.expiry {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	now := time.Now()
	for _, k := range keys {
		fmt.Fprintf(cw, "nodetrust_ca_expiry_seconds{source=%q,sha256=%q} %.0f\n", k[0], k[1], m.expiry[k].Sub(now).Seconds())
	}
	m.writeRegistries(cw, now)
	return cw.n, cw.err
}

// writeRegistries writes the last verification: verified 0/1 per registry
// and the seconds until its serving certificate expires, when one was seen.
func (m *Metrics) writeRegistries(w io.Writer, now time.Time) {
	if m.registries == nil {
		return
	}
	fmt.Fprint(w, "# HELP nodetrust_registry_verified Whether this node's pulls from the registry verify (1) or not (0), by nodetrust check.\n# TYPE nodetrust_registry_verified gauge\n")
	for _, r := range m.registries {
		v := 0
		if r.OK {
			v = 1
		}
		fmt.Fprintf(w, "nodetrust_registry_verified{registry=%q} %d\n", r.Registry, v)
	}
	fmt.Fprint(w, "# HELP nodetrust_registry_cert_expiry_seconds Seconds until the registry's serving certificate expires (negative: expired).\n# TYPE nodetrust_registry_cert_expiry_seconds gauge\n")
	for _, r := range m.registries {
		if !r.LeafNotAfter.IsZero() {
			fmt.Fprintf(w, "nodetrust_registry_cert_expiry_seconds{registry=%q} %.0f\n", r.Registry, r.LeafNotAfter.Sub(now).Seconds())
		}
	}
}

type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

// Handler serves /healthz (alive), /readyz (a sync has completed) and /metrics.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			msg := "no completed sync yet"
			if wt, ok := a.opts.Inputs.(waiter); ok && wt.Waiting() != "" {
				msg += ": " + wt.Waiting()
			}
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = a.metrics.WriteTo(w)
	})
	return mux
}
