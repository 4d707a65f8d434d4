package check

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/certsd"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
	"github.com/nodetrust/nodetrust/pkg/probe"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
)

func TestDockerInsecure(t *testing.T) {
	hosts := probe.ParseHosts([]byte("127.0.0.1 loop.example\n127.0.0.2 loop2.example\n10.0.0.7 remote.example\n127.0.0.1 both.example\n10.0.0.8 both.example\n"))
	for reg, insecure := range map[string]bool{
		"127.0.0.1:5000":      true,
		"127.9.9.9":           true,
		"loop.example:5000":   true,
		"loop2.example":       true,
		"remote.example:5000": false,
		"both.example":        false, // one address outside the range
		"dns-only.example":    false, // not looked up
		"[::1]:5000":          false, // outside 127.0.0.0/8
		"10.0.0.7:5000":       false,
	} {
		rt := Runtime{Endpoints: []Endpoint{{URL: "https://" + reg}}}
		dockerInsecure(&rt, reg, hosts)
		require.Equal(t, insecure, rt.Endpoints[0].SkipVerify, reg)
		require.Equal(t, insecure, len(rt.Warnings) == 1, reg)
	}
}

func TestReportProblemAndExpiry(t *testing.T) {
	soon, later := time.Now().Add(time.Hour), time.Now().Add(48*time.Hour)
	ok := &probe.Result{Verdict: probe.Verified, LeafNotAfter: later}
	bad := &probe.Result{Verdict: probe.UnknownAuthority, Reason: "the labelled CA did not sign this chain", LeafNotAfter: soon}
	tests := []struct {
		name    string
		rep     Report
		problem string
		expiry  time.Time
	}{
		{name: "no runtime", rep: Report{}, problem: "no container runtime on the node"},
		{name: "all verified", rep: Report{Runtimes: []Runtime{{Runtime: "containerd", OK: true, Endpoints: []Endpoint{{Probe: ok}}}}}, expiry: later},
		{name: "the first failing runtime",
			rep: Report{Runtimes: []Runtime{
				{Runtime: "containerd", OK: true, Endpoints: []Endpoint{{Probe: ok}}},
				{Runtime: "docker", Endpoints: []Endpoint{{Probe: ok}, {Probe: bad}}},
			}},
			problem: "docker: unknown-authority: the labelled CA did not sign this chain", expiry: soon},
		{name: "a CA file missing",
			rep:     Report{Runtimes: []Runtime{{Runtime: "containerd", Endpoints: []Endpoint{{URL: "https://r/v2", Problem: "unable to read CA cert /x"}}}}},
			problem: "containerd: https://r/v2: unable to read CA cert /x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.problem, tt.rep.Problem())
			require.Equal(t, tt.expiry, tt.rep.LeafNotAfter())
		})
	}
}

func TestExpiryWarning(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name    string
		probe   *probe.Result
		warning string
	}{
		{name: "in 3 days", probe: &probe.Result{Verdict: probe.Verified, LeafNotAfter: now.Add(72 * time.Hour)},
			warning: "the serving certificate of https://r/v2 expires at 2026-12-04T00:00:00Z, in 3.0 days: renew it before pulls fail"},
		{name: "in 15 days", probe: &probe.Result{Verdict: probe.Verified, LeafNotAfter: now.Add(15 * 24 * time.Hour)}},
		{name: "not verified: said by the verdict", probe: &probe.Result{Verdict: probe.UnknownAuthority, LeafNotAfter: now.Add(time.Hour)}},
		{name: "not probed", probe: nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.warning, expiryWarning(Endpoint{URL: "https://r/v2", Probe: tt.probe}, now))
		})
	}
}

func TestCertsDirCheck(t *testing.T) {
	dir := t.TempDir()
	hostfstest.WriteFile(t, dir, "etc/containers/certs.d/r.example:5000/a.crt", "x")
	hostfstest.WriteFile(t, dir, "etc/containers/certs.d/r.example:5000/client.cert", "x")
	hostfstest.WriteFile(t, dir, "etc/docker/certs.d/r.example:5000/ignored.crt", "x")
	hostfstest.WriteFile(t, dir, "etc/docker/certs.d/docker.io/hub.crt", "x")
	root, err := hostfs.Open(dir)
	require.NoError(t, err)
	defer root.Close()
	dirs := certsd.ContainersOrder()
	require.Equal(t, []string{"/etc/containers/certs.rootful.d", "/etc/containers/certs.d", "/etc/docker/certs.d"}, dirs)
	for _, tt := range []struct {
		reg, dir, url string
		cas           []string
	}{
		{reg: "r.example:5000", dir: "/etc/containers/certs.d/r.example:5000", url: "https://r.example:5000",
			cas: []string{"/etc/containers/certs.d/r.example:5000/a.crt"}},
		{reg: "docker.io", dir: "/etc/docker/certs.d/docker.io", url: "https://registry-1.docker.io",
			cas: []string{"/etc/docker/certs.d/docker.io/hub.crt"}},
		{reg: "none.example", url: "https://none.example", cas: []string{}},
	} {
		rt := certsDirCheck("containers/image", reconcile.ConfigFS(root), tt.reg, dirs)
		require.Equal(t, tt.dir, rt.Dir, tt.reg)
		require.Len(t, rt.Endpoints, 1)
		require.Equal(t, tt.url, rt.Endpoints[0].URL)
		require.Equal(t, tt.cas, rt.Endpoints[0].CAFiles)
	}
}

func TestReportUnreachable(t *testing.T) {
	ep := func(v probe.Verdict) Endpoint { return Endpoint{URL: "https://r", Probe: &probe.Result{Verdict: v}} }
	rep := func(eps ...Endpoint) Report {
		r := Report{OK: true, Runtimes: []Runtime{{Runtime: "containerd", Endpoints: eps}}}
		for _, e := range eps {
			r.OK = r.OK && e.OK()
		}
		return r
	}
	require.False(t, rep(ep(probe.Verified)).Unreachable(), "verified")
	require.True(t, rep(ep(probe.DNS)).Unreachable())
	require.True(t, rep(ep(probe.Refused), ep(probe.Timeout)).Unreachable())
	require.False(t, rep(ep(probe.Refused), ep(probe.UnknownAuthority)).Unreachable(), "one endpoint answered with a trust failure")
	require.False(t, rep(Endpoint{URL: "https://r", Problem: "unable to read CA cert"}).Unreachable(), "a CA file containerd cannot read fails before connecting")
}
