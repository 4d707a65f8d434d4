package truststore

import (
	"os"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
)

// TestMain removes the binary harness.Binary built after all tests ran.
func TestMain(m *testing.M) {
	code := m.Run()
	harness.CleanupBinary()
	os.Exit(code)
}
