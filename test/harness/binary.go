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
	agentBinOnce sync.Once
	agentBin     string
	agentBinErr  error
	agentBinDir  string
)

// AgentBinary returns the nodetrust binary under test: $NODETRUST_BIN, or one
// built once per test process from the repository root.
func AgentBinary(t testing.TB) string {
	t.Helper()
	agentBinOnce.Do(func() {
		if b := os.Getenv("NODETRUST_BIN"); b != "" {
			agentBin, agentBinErr = filepath.Abs(b)
			return
		}
		dir, err := os.MkdirTemp("", "nodetrust-bin-")
		if err != nil {
			agentBinErr = err
			return
		}
		agentBinDir = dir
		agentBin = filepath.Join(dir, "nodetrust")
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", agentBin, "./cmd/nodetrust")
		cmd.Dir = RepoRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			agentBinErr = fmt.Errorf("go build ./cmd/nodetrust in %s: %v\n%s", RepoRoot(), err, out)
			return
		}
		fmt.Fprintf(os.Stderr, "built %s in %v\n", agentBin, time.Since(start).Round(time.Millisecond))
	})
	if agentBinErr != nil {
		t.Fatal(agentBinErr)
	}
	if _, err := os.Stat(agentBin); err != nil {
		t.Fatalf("nodetrust binary: %v", err)
	}
	return agentBin
}

// CleanupAgentBinary removes a binary AgentBinary built (call from TestMain).
func CleanupAgentBinary() {
	if agentBinDir != "" {
		_ = os.RemoveAll(agentBinDir)
	}
}
