package hostfs

import (
	"crypto/rand"
	"errors"
	"io/fs"
	"path"

	"golang.org/x/sys/unix"
)

// readIfExists is read for a file that may be missing: then data is nil.
func (r *Root) readIfExists(rel string) ([]byte, fs.FileMode, error) {
	data, mode, err := r.read(rel, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	return data, mode, err
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

// mkdir creates the directory rel (mode 0755); an existing one is fs.ErrExist.
func (r *Root) mkdir(rel string) error {
	dfd, name, err := r.parent(rel, unix.O_PATH)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Mkdirat(dfd, name, 0o755); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fs.ErrExist
		}
		return &fs.PathError{Op: "mkdir", Path: rel, Err: err}
	}
	return nil
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

// atomicWrite writes data to a temporary file beside rel, syncs it, renames
// it over rel and syncs the directory. rename replaces a symlink at rel
// itself, never its target.
func (r *Root) atomicWrite(rel string, data []byte, mode fs.FileMode) error {
	dfd, name, err := r.parent(rel, unix.O_RDONLY)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	tmp := ".nodetrust-" + rand.Text()[:12] + ".tmp"
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(mode))
	if err != nil {
		return &fs.PathError{Op: "create", Path: path.Join(path.Dir(rel), tmp), Err: err}
	}
	err = writeAll(fd, data)
	if err == nil {
		err = unix.Fchmod(fd, uint32(mode))
	}
	if err == nil {
		err = unix.Fsync(fd)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dfd, tmp, dfd, name)
	}
	if err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return &fs.PathError{Op: "write", Path: rel, Err: err}
	}
	if err := unix.Fsync(dfd); err != nil {
		return &fs.PathError{Op: "sync", Path: path.Dir(rel), Err: err}
	}
	return nil
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
