package reconcile_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/plan"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/source"
)

func TestReportWording(t *testing.T) {
	id := source.ID{Kind: "Secret", Namespace: "ns", Name: "a"}
	rep := reconcile.Report{
		Rejected:     []*source.Rejection{{ID: id, Reason: "no certificate"}},
		InputErrors:  []error{errors.New("FILE: is a named pipe")},
		Failed:       []error{errors.New("write /etc/x: read-only")},
		RefreshErr:   errors.New("update-ca-certificates: exit 1"),
		NodeProblems: []string{"containerd reads no hosts.toml"},
		Warnings:     []plan.Warning{{ID: id, Message: "expires soon"}},
		NodeWarnings: []string{"no runtime"},
		Restart:      hostfs.Pending{TrustStore: true, Units: []string{"a.service", "b.service"}},
	}
	var lines, words []string
	for _, p := range rep.Problems() {
		lines, words = append(lines, p.Line()), append(words, p.String())
	}
	require.Equal(t, []string{
		"rejected Secret ns/a: no certificate",
		"unreadable FILE: is a named pipe (nothing is removed while input is unreadable)",
		"failed write /etc/x: read-only",
		"failed trust store refresh: update-ca-certificates: exit 1",
		"degraded node: containerd reads no hosts.toml",
	}, lines)
	require.Equal(t, []string{
		"rejected Secret ns/a: no certificate",
		"unreadable input: FILE: is a named pipe",
		"failed write /etc/x: read-only",
		"trust store refresh failed: update-ca-certificates: exit 1",
		"containerd reads no hosts.toml",
	}, words)
	require.Equal(t, "5 problem(s): rejected Secret ns/a: no certificate; unreadable input: FILE: is a named pipe; "+
		"failed write /etc/x: read-only; trust store refresh failed: update-ca-certificates: exit 1; containerd reads no hosts.toml",
		rep.ProblemSummary())
	require.Equal(t, []string{"Secret ns/a: expires soon", "node: no runtime"}, rep.WarningMessages())
	require.Equal(t, []string{
		"the OS trust store changed; restart the container runtimes to load it",
		"the config of a.service changed; restart it to load it",
		"the config of b.service changed; restart it to load it",
	}, rep.RestartReasons())
	require.Equal(t, "the OS trust store changed; restart the container runtimes to load it; "+
		"the config of a.service, b.service changed; restart it to load it", rep.RestartReason())

	var empty reconcile.Report
	require.Empty(t, empty.Problems())
	require.Empty(t, empty.ProblemSummary())
	require.Empty(t, empty.RestartReasons())
	require.Empty(t, empty.RestartReason())
}

func TestReportConverged(t *testing.T) {
	rejected := []*source.Rejection{{Reason: "bad"}}
	for name, tt := range map[string]struct {
		rep           reconcile.Report
		converged, ok bool
	}{
		"clean":        {reconcile.Report{}, true, true},
		"rejected":     {reconcile.Report{Rejected: rejected}, true, false},
		"node problem": {reconcile.Report{NodeProblems: []string{"p"}}, true, true},
		"unreadable":   {reconcile.Report{InputErrors: []error{errors.New("x")}}, false, false},
		"failed":       {reconcile.Report{Failed: []error{errors.New("x")}}, false, false},
		"refresh":      {reconcile.Report{RefreshErr: errors.New("x")}, false, false},
	} {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, tt.converged, tt.rep.Converged())
			require.Equal(t, tt.ok, tt.rep.OK())
		})
	}
}
