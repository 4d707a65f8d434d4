package chart

import (
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
)

// TestMain removes the nodetrust binary harness.Binary built, if it built one.
func TestMain(m *testing.M) { harness.Main(m) }
