package hostfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// LockPath is the lock file that makes one nodetrust at a time write below
// a host root, relative to it. It stays empty: a run that finds nothing to
// do must write nothing, so its holder is found from /proc/locks instead.
const LockPath = "var/lib/nodetrust/lock"

// lockDirs are created, when missing, to hold LockPath; outermost first.
var lockDirs = []string{"var", "var/lib", "var/lib/nodetrust"}

// lockPoll is how often a waiting Lock tries again.
const lockPoll = 50 * time.Millisecond

// Lock is the exclusive lock on a host root's var/lib/nodetrust.
type Lock struct {
	r       *Root
	fd      int
	created []string // lockDirs this Lock made
}

// LockedError is returned by a Lock that was not to wait.
type LockedError struct {
	Dir    string // the locked directory
	Holder string // "pid N (command)", from /proc/locks
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("%s is locked by %s: another nodetrust is writing to this host root", e.Dir, e.Holder)
}

// Lock takes the exclusive lock on var/lib/nodetrust (an flock on
// LockPath, reached without following symlinks), creating it when missing;
// nothing is ever written into it. While another process holds it,
// Lock calls waiting with the holder (again when the holder changes) and
// tries again until ctx ends; with wait false it returns a *LockedError
// naming the holder instead. Take it before LoadState and hold it until
// the last write of the record.
func (r *Root) Lock(ctx context.Context, wait bool, waiting func(holder string)) (*Lock, error) {
	last := ""
	for polls := 0; ; polls++ {
		l, holder, err := r.tryLock()
		if errors.Is(err, errStale) {
			continue
		}
		if err != nil || l != nil {
			return l, err
		}
		if !wait {
			return nil, &LockedError{Dir: path.Join(r.dir, path.Dir(LockPath)), Holder: holder}
		}
		// A holder that just took the lock may not have written its name yet.
		if holder != last && waiting != nil && (holder != unknownHolder || polls >= 10) {
			waiting(holder)
			last = holder
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the lock on %s: %w", path.Join(r.dir, path.Dir(LockPath)), ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// errStale: the lock file or its directory went away under tryLock (the
// holder before it unlocked a clean host); try again at once.
var errStale = errors.New("lock file removed meanwhile")

// tryLock makes one attempt. It returns the lock, or the holder when
// another process has it.
func (r *Root) tryLock() (*Lock, string, error) {
	l := &Lock{r: r, fd: -1}
	for _, d := range lockDirs {
		err := r.mkdir(d)
		switch {
		case err == nil:
			l.created = append(l.created, d)
		case errors.Is(err, fs.ErrNotExist): // removed meanwhile by the holder before
			return nil, "", errStale
		case !errors.Is(err, fs.ErrExist):
			return nil, "", fmt.Errorf("lock %s: %w", r.dir, err)
		}
	}
	dfd, name, err := r.parent(LockPath, unix.O_PATH)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", errStale
	}
	if err != nil {
		return nil, "", fmt.Errorf("lock %s: %w", r.dir, err)
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, fileMode)
	if errors.Is(err, unix.ENOENT) { // the directory was removed after we opened it
		return nil, "", errStale
	}
	if err != nil {
		return nil, "", fmt.Errorf("lock %s: %w", r.dir, pathErr(LockPath, err))
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, holderOf(fd), nil
		}
		return nil, "", fmt.Errorf("lock %s: %w", path.Join(r.dir, LockPath), err)
	}
	// The holder before us may have removed the file it locked (Unlock on
	// a clean host): a lock on that one excludes nobody.
	var locked, named unix.Stat_t
	if unix.Fstat(fd, &locked) != nil || unix.Fstatat(dfd, name, &named, unix.AT_SYMLINK_NOFOLLOW) != nil ||
		locked.Ino != named.Ino || locked.Dev != named.Dev {
		unix.Close(fd)
		return nil, "", errStale
	}
	l.fd = fd
	if len(l.created) > 0 || locked.Mode&0o777 != uint32(fileMode) {
		_ = unix.Fchmod(fd, fileMode) // whatever the umask; never touched again
	}
	return l, "", nil
}

const unknownHolder = "an unknown process"

// holderOf names the process that holds the flock on fd's file, from
// /proc/locks: "pid N (nodetrust apply)". A holder in another PID namespace
// (the agent's container, seen from the host, or the other way round) may
// show as pid 0 or not at all: "an unknown process".
func holderOf(fd int) string {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return unknownHolder
	}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		return unknownHolder
	}
	dev := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		// 1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF ("->" marks waiters)
		if len(f) < 6 || f[1] != "FLOCK" || f[5] != dev {
			continue
		}
		pid, err := strconv.Atoi(f[4])
		if err != nil || pid <= 0 {
			return unknownHolder
		}
		return fmt.Sprintf("pid %d (%s)", pid, commandOf(pid))
	}
	return unknownHolder
}

// commandOf is a process's command line, shortened: "nodetrust apply".
func commandOf(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(data) == 0 {
		return "not visible from here"
	}
	args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	out := path.Base(args[0])
	if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
		out += " " + args[1]
	}
	return out
}

// Unlock releases the lock. When nothing is recorded any more (no
// ownership record: nothing owned), it first removes the lock file, the
// directory and the parents this Lock created, so a host nodetrust was
// uninstalled from keeps nothing of it. (On a host root without var/lib,
// which only test roots are, var and var/lib stay when the Lock that
// created them was not the last one.)
func (l *Lock) Unlock() error {
	if l == nil || l.fd < 0 {
		return nil
	}
	defer func() {
		unix.Close(l.fd)
		l.fd = -1
	}()
	if _, err := l.r.stat(StatePath); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := l.r.remove(LockPath, false); err != nil {
		return fmt.Errorf("unlock %s: %w", l.r.dir, err)
	}
	_ = l.r.remove(path.Dir(LockPath), true) // stays when someone put files there
	for i := len(l.created) - 1; i >= 0; i-- {
		if d := l.created[i]; d != path.Dir(LockPath) {
			_ = l.r.remove(d, true)
		}
	}
	return nil
}
