package harness

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"

	cdlog "github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

// ContainerdLog collects the warnings and errors containerd's loaders log,
// with their level and the error, plugin and key they name. Loading a host
// directory, a hosts.toml that fails to parse is only logged (containerd
// silently falls back to reading *.crt files, which would hide a broken file
// from a trust check); loading a config, unknown keys, migrations and
// deprecations are.
type ContainerdLog struct {
	mu      sync.Mutex
	entries []string
}

// CaptureContainerdLog returns a context whose containerd logger (v2's and
// 1.7's: both use github.com/containerd/log) records into the returned log.
func CaptureContainerdLog() (context.Context, *ContainerdLog) {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.WarnLevel)
	c := &ContainerdLog{}
	l.AddHook(c)
	return cdlog.WithLogger(context.Background(), logrus.NewEntry(l)), c
}

// Entries returns what was logged so far, one line per entry.
func (c *ContainerdLog) Entries() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.entries...)
}

// Levels is what logrus hands the hook: warnings and worse.
func (c *ContainerdLog) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

// Fire records one entry.
func (c *ContainerdLog) Fire(e *logrus.Entry) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	msg := e.Level.String() + ": " + e.Message
	if err, ok := e.Data[logrus.ErrorKey]; ok {
		msg += fmt.Sprintf(": %v", err)
	}
	for _, f := range []string{"plugin", "key"} {
		if v, ok := e.Data[f]; ok {
			msg += " " + f + "=" + strconv.Quote(fmt.Sprint(v))
		}
	}
	c.entries = append(c.entries, msg)
	return nil
}
