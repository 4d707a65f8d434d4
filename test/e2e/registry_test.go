package e2e

import (
	"runtime"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/nodetrust/nodetrust/test/harness"
)

// dockerRegistry is harness.Registry under the alias registryHost, pushing
// the one image the node pulls.
type dockerRegistry struct{ *harness.Registry }

// name is the registry as written in image references (the alias host).
func (r *dockerRegistry) name() string { return r.Name() }

// loopback is the registry's address for the push from this process.
func (r *dockerRegistry) loopback() string { return r.Loopback() }

func newDockerRegistry(t *testing.T) *dockerRegistry {
	t.Helper()
	return &dockerRegistry{harness.NewRegistry(t, registryHost)}
}

// start (re)starts the registry serving sc, trusted by c for readiness (nil:
// readiness without verification, for certificates that must fail).
func (r *dockerRegistry) start(sc harness.Serving, c *ca) (time.Duration, error) {
	var trust *harness.CA
	if c != nil {
		trust = c.CA
	}
	return r.Start(sc, trust)
}

// push writes a small random image (one layer) as e2e/img:v1, addressed as
// 127.0.0.1:port and trusting only c, and returns its digest.
func (r *dockerRegistry) push(c *ca) (v1.Hash, error) {
	img, err := random.Image(2048, 1)
	if err != nil {
		return v1.Hash{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return v1.Hash{}, err
	}
	if err := r.Push(img, "e2e/img:v1", c.CA); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}

// imageRef is the reference the node pulls.
func (r *dockerRegistry) imageRef() string { return r.name() + "/e2e/img:v1" }
