package image

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
)

// toolDir holds this test process's build of tools/image.
var (
	toolDir  string
	toolOnce sync.Once
)

// TestMain gives the tests one directory for the tool build and removes it.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nodetrust-image-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "test/image:", err)
		os.Exit(1)
	}
	toolDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	harness.CleanupBinary()
	os.Exit(code)
}

// imageTool is tools/image, the tool behind `make image`, built once for
// all (parallel) tests.
func imageTool(t *testing.T) string {
	t.Helper()
	toolOnce.Do(func() { harness.ImageTool(t, toolDir) })
	bin := filepath.Join(toolDir, "image-tool")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("tools/image was not built: %v", err)
	}
	return bin
}
