package chart

// The alert rules of files/alerts.yaml, as promtool would test them: parsed
// and validated with Prometheus's rulefmt and promql parser, then each alert
// evaluated every minute (with its `for`) by Prometheus's own rule engine
// against synthetic series loaded with promqltest's `load` syntax.

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
	"github.com/stretchr/testify/require"
)

var promParser = parser.NewParser(parser.Options{})

func alertRules(t *testing.T) map[string]rulefmt.Rule {
	t.Helper()
	groups, errs := rulefmt.ParseFile(filepath.Join(ChartDir(), "files", "alerts.yaml"), false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler))
	require.Empty(t, errs)
	out := map[string]rulefmt.Rule{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			require.NotEmpty(t, r.Alert, "only alerting rules")
			require.NotContains(t, out, r.Alert, "alert names are unique")
			out[r.Alert] = r
		}
	}
	return out
}

// firing evaluates rule every minute from 0 to the last of at over the
// series in load (promqltest `load 1m` lines) and returns, at each time of
// at, the firing alerts as "k=v,..." of the labels named in keys.
func firing(t *testing.T, rule rulefmt.Rule, load string, keys []string, at ...time.Duration) map[time.Duration][]string {
	t.Helper()
	storage := promqltest.LoadedStorage(t, "load 1m\n"+strings.TrimLeft(load, "\n"))
	engine := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	expr, err := promParser.ParseExpr(rule.Expr)
	require.NoError(t, err)
	ar := rules.NewAlertingRule(rule.Alert, expr, time.Duration(rule.For), 0, labels.FromMap(rule.Labels),
		labels.FromMap(rule.Annotations), labels.EmptyLabels(), "", true, slog.New(slog.DiscardHandler))
	query := rules.EngineQueryFunc(engine, storage)
	want := map[time.Duration]bool{}
	last := time.Duration(0)
	for _, a := range at {
		want[a] = true
		last = max(last, a)
	}
	out := map[time.Duration][]string{}
	for ts := time.Duration(0); ts <= last; ts += time.Minute {
		_, err := ar.Eval(context.Background(), 0, time.Unix(0, 0).Add(ts), query, nil, 0)
		require.NoError(t, err, "eval at %v", ts)
		if !want[ts] {
			continue
		}
		fired := []string{}
		for _, a := range ar.ActiveAlerts() {
			if a.State != rules.StateFiring {
				continue
			}
			var kv []string
			for _, k := range keys {
				kv = append(kv, k+"="+a.Labels.Get(k))
			}
			require.Equal(t, rule.Labels["severity"], a.Labels.Get("severity"))
			fired = append(fired, strings.Join(kv, ","))
		}
		sort.Strings(fired)
		out[ts] = fired
	}
	return out
}

func TestAlertRules(t *testing.T) {
	all := alertRules(t)
	const day = 86400
	for name, tc := range map[string]struct {
		load string
		keys []string
		want map[time.Duration][]string
	}{
		"NodeTrustDegraded": {
			// a: Degraded throughout; b: Ready; c: NodeTrustReady False from
			// 5 m; d: Degraded for 6 minutes only, then Ready (the old series
			// goes stale, as kube-state-metrics' scrape makes it).
			load: `
  kube_node_annotations{node="a",annotation_nodetrust_io_state="Degraded"} 1x30
  kube_node_annotations{node="b",annotation_nodetrust_io_state="Ready"} 1x30
  kube_node_status_condition{node="c",condition="NodeTrustReady",status="false"} 0x4 1x25
  kube_node_status_condition{node="c",condition="NodeTrustReady",status="true"} 1x4 0x25
  kube_node_annotations{node="d",annotation_nodetrust_io_state="Degraded"} 1x5 stale
  kube_node_annotations{node="d",annotation_nodetrust_io_state="Ready"} _x6 1x24`,
			keys: []string{"node"},
			want: map[time.Duration][]string{9 * time.Minute: {}, 10 * time.Minute: {"node=a"}, 16 * time.Minute: {"node=a", "node=c"}},
		},
		"NodeTrustCAExpiringSoon": {
			// aa: 40 days left everywhere; bb: 20 days on two nodes (one
			// alert); cc: expired on one node.
			load: fmt.Sprintf(`
  nodetrust_ca_expiry_seconds{node="a",source="nodetrust-system/ca",sha256="aa"} %dx30
  nodetrust_ca_expiry_seconds{node="b",source="nodetrust-system/ca",sha256="aa"} %dx30
  nodetrust_ca_expiry_seconds{node="a",source="nodetrust-system/ca",sha256="bb"} %dx30
  nodetrust_ca_expiry_seconds{node="b",source="nodetrust-system/ca",sha256="bb"} %dx30
  nodetrust_ca_expiry_seconds{node="a",source="team/old",sha256="cc"} -100x30`, 40*day, 40*day, 20*day, 20*day-60),
			keys: []string{"source", "sha256", "node"},
			want: map[time.Duration][]string{
				14 * time.Minute: {},
				15 * time.Minute: {"source=nodetrust-system/ca,sha256=bb,node=", "source=team/old,sha256=cc,node="},
			},
		},
		"NodeTrustSyncFailing": {
			// a: never succeeded, one failure a minute; b: failures too,
			// but a sync succeeds every minute; c: never succeeded, no
			// failure (not started yet).
			load: `
  nodetrust_last_success_timestamp_seconds{node="a"} 0x40
  nodetrust_sync_failures_total{node="a"} 0+1x40
  nodetrust_last_success_timestamp_seconds{node="b"} 0+60x40
  nodetrust_sync_failures_total{node="b"} 0+1x40
  nodetrust_last_success_timestamp_seconds{node="c"} 0x40
  nodetrust_sync_failures_total{node="c"} 0x40`,
			keys: []string{"node"},
			want: map[time.Duration][]string{15 * time.Minute: {}, 20 * time.Minute: {}, 21 * time.Minute: {"node=a"}},
		},
		"NodeTrustRegistryNotVerified": {
			// r1 fails on a only; r2 on a recovers after 5 minutes.
			load: `
  nodetrust_registry_verified{node="a",registry="r1.example:5000"} 0x20
  nodetrust_registry_verified{node="b",registry="r1.example:5000"} 1x20
  nodetrust_registry_verified{node="a",registry="r2.example"} 0x5 1x15`,
			keys: []string{"node", "registry"},
			want: map[time.Duration][]string{9 * time.Minute: {}, 10 * time.Minute: {"node=a,registry=r1.example:5000"}},
		},
		"NodeTrustAgentsMissing": {
			// 2 of 3 ready from 6 m; another DaemonSet's gap is not ours.
			load: `
  kube_daemonset_status_number_ready{namespace="nodetrust-system",daemonset="nodetrust"} 3x5 2x20
  kube_daemonset_status_desired_number_scheduled{namespace="nodetrust-system",daemonset="nodetrust"} 3x25
  kube_daemonset_status_number_ready{namespace="kube-system",daemonset="other"} 1x25
  kube_daemonset_status_desired_number_scheduled{namespace="kube-system",daemonset="other"} 2x25`,
			keys: []string{"namespace", "daemonset"},
			want: map[time.Duration][]string{15 * time.Minute: {}, 16 * time.Minute: {"namespace=nodetrust-system,daemonset=nodetrust"}},
		},
	} {
		t.Run(name, func(t *testing.T) {
			rule, ok := all[name]
			require.True(t, ok, "no alert %s in files/alerts.yaml", name)
			delete(all, name)
			var at []time.Duration
			for ts := range tc.want {
				at = append(at, ts)
			}
			require.Equal(t, tc.want, firing(t, rule, tc.load, tc.keys, at...))
		})
	}
	require.Empty(t, all, "alerts without a test")
}
