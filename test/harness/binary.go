package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

// Binary returns the nodetrust binary under test: $NODETRUST_BIN, or one
// built once per test process from the repository root. Reading
// $NODETRUST_BIN and stating the binary from inside a test puts both into the
// go test cache key, so a rebuilt or different binary is never judged by a
// cached result; a binary built here lives in a temporary directory that is
// gone afterwards, so such runs are never cached.
func Binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if b := os.Getenv("NODETRUST_BIN"); b != "" {
			binPath, binErr = filepath.Abs(b)
			return
		}
		dir, err := os.MkdirTemp("", "nodetrust-bin-")
		if err != nil {
			binErr = err
			return
		}
		binDir = dir
		binPath = filepath.Join(dir, "nodetrust")
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/nodetrust")
		cmd.Dir = RepoRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build ./cmd/nodetrust in %s: %v\n%s", RepoRoot(), err, out)
			return
		}
		fmt.Fprintf(os.Stderr, "built %s in %v\n", binPath, time.Since(start).Round(time.Millisecond))
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	if _, err := os.Stat(binPath); err != nil {
		t.Fatalf("nodetrust binary: %v", err)
	}
	return binPath
}

// CleanupBinary removes a binary that Binary built (call from TestMain).
func CleanupBinary() {
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
}

// Main runs a suite's tests, then removes a binary that Binary built: call it
// as a package's TestMain.
func Main(m *testing.M) {
	code := m.Run()
	CleanupBinary()
	os.Exit(code)
}
