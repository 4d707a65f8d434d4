package hostfs

import (
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Modes of what nodetrust creates, whatever the process umask: runtimes
// running as other users (rootless podman) read certs.d.
const (
	dirMode  = 0o755
	fileMode = 0o644
)

// readIfExists is read for a file that may be missing: then data is nil.
func (r *Root) readIfExists(rel string) ([]byte, attrs, error) {
	data, at, err := r.read(rel, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, attrs{}, nil
	}
	return data, at, err
}

// stat returns the file type bits of rel, refusing symlinks.
func (r *Root) stat(rel string) (uint32, error) {
	fd, err := r.open(rel, unix.O_PATH, false)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Mode & unix.S_IFMT, nil
}

// parent opens the directory holding rel for *at calls.
func (r *Root) parent(rel string, flags int) (int, string, error) {
	if err := checkClean(rel); err != nil {
		return -1, "", err
	}
	fd, err := r.open(path.Dir(rel), flags|unix.O_DIRECTORY, false)
	return fd, path.Base(rel), err
}

// mkdir creates the directory rel, mode 0755 whatever the umask; an
// existing one is fs.ErrExist.
func (r *Root) mkdir(rel string) error {
	dfd, name, err := r.parent(rel, unix.O_PATH)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Mkdirat(dfd, name, dirMode); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fs.ErrExist
		}
		return &fs.PathError{Op: "mkdir", Path: rel, Err: err}
	}
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.Fchmod(fd, dirMode)
		unix.Close(fd)
	}
	if err != nil {
		return &fs.PathError{Op: "chmod", Path: rel, Err: err}
	}
	return nil
}

// tmpPrefix and tmpSuffix frame the temporary files writes go through.
const tmpPrefix, tmpSuffix = ".nodetrust-", ".tmp"

// sweep removes nodetrust's temporary files left in dir by a killed run
// and returns their paths. Only regular files named like one are removed.
func (r *Root) sweep(dir string) []string {
	fd, err := r.open(dir, unix.O_RDONLY|unix.O_DIRECTORY, false)
	if err != nil {
		return nil
	}
	f := os.NewFile(uintptr(fd), dir)
	defer f.Close()
	names, _ := f.Readdirnames(-1)
	var out []string
	for _, n := range names {
		if !strings.HasPrefix(n, tmpPrefix) || !strings.HasSuffix(n, tmpSuffix) {
			continue
		}
		var st unix.Stat_t
		if unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		if unix.Unlinkat(fd, n, 0) == nil {
			out = append(out, path.Join(dir, n))
		}
	}
	return out
}

// remove unlinks the file, or with dir the empty directory, at rel. A
// missing entry is not an error.
func (r *Root) remove(rel string, dir bool) error {
	dfd, name, err := r.parent(rel, unix.O_PATH)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	flags := 0
	if dir {
		flags = unix.AT_REMOVEDIR
	}
	if err := unix.Unlinkat(dfd, name, flags); err != nil && !errors.Is(err, unix.ENOENT) {
		return &fs.PathError{Op: "remove", Path: rel, Err: err}
	}
	return nil
}

// atomicWrite replaces rel with data durably: a batch of one.
func (r *Root) atomicWrite(rel string, data []byte, at attrs) error {
	s, err := r.stage(rel, data, at)
	if err != nil {
		return err
	}
	return commit([]staged{s})[0]
}

func writeAll(fd int, data []byte) error {
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// staged is a temporary file written and closed beside its target, waiting
// to be renamed over it.
type staged struct {
	dfd       int // the target's directory, open until commit
	dev       uint64
	tmp, name string
	rel       string
	// noReplace: there was no file when the write was planned, so one that
	// appeared since (another writer's) is not replaced; the next sync
	// merges into it.
	noReplace bool
}

// stage writes data to a temporary file beside rel, without syncing it.
// The file gets at's owner (with at.chown) and mode, set explicitly after
// the create so the umask does not matter.
func (r *Root) stage(rel string, data []byte, at attrs) (staged, error) {
	dfd, name, err := r.parent(rel, unix.O_RDONLY)
	if err != nil {
		return staged{}, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		unix.Close(dfd)
		return staged{}, err
	}
	s := staged{dfd: dfd, dev: st.Dev, tmp: tmpPrefix + rand.Text()[:12] + tmpSuffix, name: name, rel: rel}
	mode := at.mode
	if mode == 0 {
		mode = fileMode
	}
	fd, err := unix.Openat(dfd, s.tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(mode))
	if err != nil {
		unix.Close(dfd)
		return staged{}, &fs.PathError{Op: "create", Path: path.Join(path.Dir(rel), s.tmp), Err: err}
	}
	err = writeAll(fd, data)
	if err == nil && at.chown {
		err = unix.Fchown(fd, at.uid, at.gid)
	}
	if err == nil { // after the chown, which may clear set-id bits
		err = unix.Fchmod(fd, uint32(mode))
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		s.abort()
		return staged{}, &fs.PathError{Op: "write", Path: rel, Err: err}
	}
	return s, nil
}

// rename moves the temporary file into place.
func (s staged) rename() error {
	if !s.noReplace {
		return unix.Renameat(s.dfd, s.tmp, s.dfd, s.name)
	}
	err := unix.Renameat2(s.dfd, s.tmp, s.dfd, s.name, unix.RENAME_NOREPLACE)
	switch {
	case errors.Is(err, unix.EEXIST):
		return errors.New("another writer created the file meanwhile; left to it, merged on the next sync")
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS): // a filesystem without RENAME_NOREPLACE
		return unix.Renameat(s.dfd, s.tmp, s.dfd, s.name)
	}
	return err
}

func (s staged) abort() {
	_ = unix.Unlinkat(s.dfd, s.tmp, 0)
	unix.Close(s.dfd)
}

// commit makes a batch of staged files durable and renames them into place,
// in order: one syncfs per filesystem so every file's data is on disk before
// any rename, the renames, and one more syncfs for the directory entries.
// Two journal commits per batch instead of two per file: on a disk shared by
// many agents (or nodes), per-file fsyncs dominated a sync. It returns one
// error per staged file.
func commit(batch []staged) []error {
	errs := make([]error, len(batch))
	syncAll := func() error {
		seen := map[uint64]bool{}
		for _, s := range batch {
			if !seen[s.dev] {
				seen[s.dev] = true
				if err := unix.Syncfs(s.dfd); err != nil {
					return err
				}
			}
		}
		return nil
	}
	defer func() {
		for _, s := range batch {
			unix.Close(s.dfd)
		}
	}()
	if err := syncAll(); err != nil {
		for i, s := range batch {
			_ = unix.Unlinkat(s.dfd, s.tmp, 0)
			errs[i] = &fs.PathError{Op: "sync", Path: s.rel, Err: err}
		}
		return errs
	}
	for i, s := range batch {
		if err := s.rename(); err != nil {
			_ = unix.Unlinkat(s.dfd, s.tmp, 0)
			errs[i] = &fs.PathError{Op: "rename", Path: s.rel, Err: err}
		}
	}
	if err := syncAll(); err != nil {
		for i, s := range batch {
			if errs[i] == nil {
				errs[i] = &fs.PathError{Op: "sync", Path: path.Dir(s.rel), Err: err}
			}
		}
	}
	return errs
}
