package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LeaderPID returns the host PID of the container's PID 1: the descendant of
// nspawn whose PID in its own namespace is 1, or 0 if there is none yet.
func LeaderPID(nspawn int) int {
	queue := []int{nspawn}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if pid != nspawn && NSPIDIsOne(pid) {
			return pid
		}
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, field := range strings.Fields(string(b)) {
				if child, err := strconv.Atoi(field); err == nil {
					queue = append(queue, child)
				}
			}
		}
	}
	return 0
}

// NSPIDIsOne reports whether pid is PID 1 of a nested PID namespace
// ("NSpid:\t<host pid>\t1" in /proc/PID/status).
func NSPIDIsOne(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			return len(f) > 1 && f[len(f)-1] == "1"
		}
	}
	return false
}

// RemoveCgroups removes cgroup directories deepest first and returns
// those that are still there.
func RemoveCgroups(dirs []string) (left []string) {
	for _, top := range dirs {
		var all []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				all = append(all, p)
			}
			return nil
		})
		for i := len(all) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(all[i])
		}
		if _, err := os.Stat(top); err == nil {
			left = append(left, top)
		}
	}
	return left
}
