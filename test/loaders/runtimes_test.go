package loaders

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
	"github.com/stretchr/testify/require"

	cd17docker "github.com/containerd/containerd/remotes/docker"
	cd17config "github.com/containerd/containerd/remotes/docker/config"
	cd2docker "github.com/containerd/containerd/v2/core/remotes/docker"
	cd2config "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containers/image/v5/pkg/tlsclientconfig"
	mobyregistry "github.com/docker/docker/registry"
)

// hostView is what a containerd loader resolved for one endpoint of a registry.
type hostView struct {
	host, scheme, path string
	tls                *tls.Config
}

func (h hostView) String() string { return fmt.Sprintf("%s://%s%s", h.scheme, h.host, h.path) }

func transportTLS(t *testing.T, c *http.Client) *tls.Config {
	t.Helper()
	require.NotNil(t, c, "containerd returned a host without an HTTP client")
	tr, ok := c.Transport.(*http.Transport)
	require.Truef(t, ok, "containerd host transport is %T, want *http.Transport", c.Transport)
	require.NotNil(t, tr.TLSClientConfig)
	return tr.TLSClientConfig
}

// containerdV2Hosts resolves registry with containerd v2's hosts.toml loader,
// rooted at ROOT/etc/containerd/certs.d, as the CRI plugin does with
// config_path = "/etc/containerd/certs.d".
func containerdV2Hosts(t *testing.T, root, registry string) []hostView {
	t.Helper()
	ctx, logs := harness.CaptureContainerdLog()
	resolve := cd2config.ConfigureHosts(ctx, cd2config.HostOptions{
		HostDir: cd2config.HostDirFromRoot(filepath.Join(root, "etc/containerd/certs.d")),
	})
	hosts, err := resolve(registry)
	require.NoError(t, err, "containerd v2 ConfigureHosts(%s)", registry)
	require.Empty(t, logs.Entries(), "containerd v2 logged problems loading the host directory")
	var out []hostView
	for _, h := range hosts {
		out = append(out, cd2View(t, h))
	}
	return out
}

func cd2View(t *testing.T, h cd2docker.RegistryHost) hostView {
	return hostView{host: h.Host, scheme: h.Scheme, path: h.Path, tls: transportTLS(t, h.Client)}
}

// containerd17Hosts is containerdV2Hosts with containerd 1.7's loader.
func containerd17Hosts(t *testing.T, root, registry string) []hostView {
	t.Helper()
	ctx, logs := harness.CaptureContainerdLog()
	resolve := cd17config.ConfigureHosts(ctx, cd17config.HostOptions{
		HostDir: cd17config.HostDirFromRoot(filepath.Join(root, "etc/containerd/certs.d")),
	})
	hosts, err := resolve(registry)
	require.NoError(t, err, "containerd 1.7 ConfigureHosts(%s)", registry)
	require.Empty(t, logs.Entries(), "containerd 1.7 logged problems loading the host directory")
	var out []hostView
	for _, h := range hosts {
		out = append(out, cd17View(t, h))
	}
	return out
}

func cd17View(t *testing.T, h cd17docker.RegistryHost) hostView {
	return hostView{host: h.Host, scheme: h.Scheme, path: h.Path, tls: transportTLS(t, h.Client)}
}

// upstream returns the host containerd tries last: the registry itself.
func upstream(t *testing.T, hosts []hostView, registry string) hostView {
	t.Helper()
	require.NotEmpty(t, hosts)
	up := hosts[len(hosts)-1]
	require.Equal(t, registry, up.host, "upstream host; all hosts: %v", hosts)
	require.Equal(t, "https", up.scheme, "upstream scheme")
	require.Equal(t, "/v2", up.path, "upstream path")
	return up
}

// runtime is one container runtime's way of turning a host root into the
// TLS client configuration it uses to talk to a registry's upstream endpoint.
type runtime struct {
	name        string
	certsDir    string // relative to the host root
	upstreamTLS func(t *testing.T, root, registry string) *tls.Config
}

var runtimes = []runtime{
	{
		name:     "containerd-v2",
		certsDir: "etc/containerd/certs.d",
		upstreamTLS: func(t *testing.T, root, registry string) *tls.Config {
			return upstream(t, containerdV2Hosts(t, root, registry), registry).tls
		},
	},
	{
		name:     "containerd-1.7",
		certsDir: "etc/containerd/certs.d",
		upstreamTLS: func(t *testing.T, root, registry string) *tls.Config {
			return upstream(t, containerd17Hosts(t, root, registry), registry).tls
		},
	},
	{
		// dockerd: registry.ReadCertsDirectory(tlsConfig, /etc/docker/certs.d/<host:port>)
		name:     "docker",
		certsDir: "etc/docker/certs.d",
		upstreamTLS: func(t *testing.T, root, registry string) *tls.Config {
			tlsc := &tls.Config{}
			dir := filepath.Join(root, "etc/docker/certs.d", registry)
			require.NoError(t, mobyregistry.ReadCertsDirectory(tlsc, dir), "moby ReadCertsDirectory(%s)", dir)
			return tlsc
		},
	},
	{
		// CRI-O, podman, skopeo: tlsclientconfig.SetupCertificates(/etc/containers/certs.d/<host:port>)
		name:     "containers-image",
		certsDir: "etc/containers/certs.d",
		upstreamTLS: func(t *testing.T, root, registry string) *tls.Config {
			tlsc := &tls.Config{}
			dir := filepath.Join(root, "etc/containers/certs.d", registry)
			require.NoError(t, tlsclientconfig.SetupCertificates(dir, tlsc), "containers/image SetupCertificates(%s)", dir)
			return tlsc
		},
	},
}
