package node

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/nodetrust/nodetrust/test/harness"
)

// registry is harness.Registry under the alias registryHost; it restarts
// on the same port and storage with another serving certificate.
type registry struct{ *harness.Registry }

func newRegistry(t *testing.T) *registry {
	t.Helper()
	return &registry{harness.NewRegistry(t, registryHost)}
}

// ref is an image reference on this registry, by its alias name.
func (r *registry) ref(repo string) string { return r.Name() + "/" + repo }

// serve (re)starts the registry with sc and waits until it serves /v2/
// verified by ca.
func (r *registry) serve(t *testing.T, sc harness.Serving, ca *harness.CA) {
	t.Helper()
	if _, err := r.Start(sc, ca); err != nil {
		t.Fatal(err)
	}
}

// push copies the image in a docker-archive tarball to repo on this
// registry, trusting ca.
func (r *registry) push(t *testing.T, tarPath, repo string, ca *harness.CA) {
	t.Helper()
	img, err := tarball.ImageFromPath(tarPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Push(img, repo, ca); err != nil {
		t.Fatal(err)
	}
}
