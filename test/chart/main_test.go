package chart

import (
	"os"
	"testing"

	"github.com/nodetrust/nodetrust/test/cluster"
)

// TestMain removes the nodetrust binary test/cluster built, if it built one.
func TestMain(m *testing.M) {
	code := m.Run()
	cluster.CleanupAgentBinary()
	os.Exit(code)
}
