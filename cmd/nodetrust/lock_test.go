package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
)

func TestApplyLock(t *testing.T) {
	root, dir, _ := goodSource(t)
	r, err := hostfs.Open(root)
	require.NoError(t, err)
	defer r.Close()
	held, err := r.Lock(context.Background(), true, nil)
	require.NoError(t, err)
	holder := fmt.Sprintf("pid %d (%s)", os.Getpid(), filepath.Base(os.Args[0])) // from /proc/locks

	code, out, errOut := exec("apply", "-f", dir, "--host-root", root, "--no-wait")
	require.Equal(t, 1, code, out)
	require.Contains(t, errOut, filepath.Join(root, "var/lib/nodetrust")+" is locked by "+holder)
	require.NotContains(t, hostfstest.Tree(t, root), "etc/docker/certs.d", "nothing written")

	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = held.Unlock()
	}()
	code, out, errOut = exec("apply", "-f", dir, "--host-root", root)
	require.Equal(t, 0, code, out)
	require.Contains(t, errOut, "waiting for the lock on "+filepath.Join(root, "var/lib/nodetrust")+" held by "+holder+"\n")
	require.Contains(t, out, "1 files written")
}

// TestApplyJSONWithoutRecord: a record that cannot be saved (here: a file
// size limit below the record's size, in a child process) fails the apply
// after it printed what it did.
func TestApplyJSONWithoutRecord(t *testing.T) {
	if args := os.Getenv("NODETRUST_TEST_APPLY"); args != "" {
		limit, err := strconv.ParseUint(os.Getenv("NODETRUST_TEST_FSIZE"), 10, 64)
		require.NoError(t, err)
		require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: limit, Max: limit}))
		code, out, errOut := exec(strings.Split(args, "\x1f")...)
		fmt.Print(out)
		fmt.Fprint(os.Stderr, errOut)
		os.Exit(code)
	}
	root, dir, caPEM := goodSource(t)
	cmd := osexec.Command(os.Args[0], "-test.run=^TestApplyJSONWithoutRecord$")
	cmd.Env = append(os.Environ(),
		"NODETRUST_TEST_APPLY="+strings.Join([]string{"apply", "-f", dir, "--host-root", root, "--output", "json"}, "\x1f"),
		"NODETRUST_TEST_FSIZE="+strconv.Itoa(len(caPEM)+64)) // the CA file fits, the record (which holds it) does not
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *osexec.ExitError
	require.ErrorAs(t, err, &exitErr, stderr.String())
	require.Equal(t, 1, exitErr.ExitCode())
	require.Contains(t, stderr.String(), "ownership record not saved")
	var rep jsonReport
	require.NoError(t, json.Unmarshal([]byte(stdout.String()), &rep), stdout.String())
	require.Equal(t, []string{"etc/docker/certs.d/r.example:5000/nodetrust_secret_registry_good.crt"}, rep.Written)
	require.False(t, rep.OK)
	require.Len(t, rep.Failed, 1)
	require.Contains(t, rep.Failed[0], "ownership record not saved")
}
