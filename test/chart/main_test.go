package chart

import (
	"os"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
)

// TestMain removes the nodetrust binary test/cluster built, if it built one.
func TestMain(m *testing.M) {
	code := m.Run()
	harness.CleanupBinary()
	os.Exit(code)
}
