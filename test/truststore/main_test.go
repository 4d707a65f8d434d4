package truststore

import (
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
)

// TestMain removes the binary harness.Binary built after all tests ran.
func TestMain(m *testing.M) { harness.Main(m) }
