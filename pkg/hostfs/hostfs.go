// Package hostfs is the only package that writes to the host. It applies a
// desired file tree under a host root: no path component below the root may
// be a symlink (enforced by the kernel with openat2 RESOLVE_NO_SYMLINKS, or
// by a component walk on older kernels), writes are atomic (a
// .nodetrust-<random>.tmp file beside the target, syncfs, rename, syncfs),
// and an ownership record (var/lib/nodetrust/state.json) remembers exactly
// which files and directories nodetrust wrote, so it never changes or
// deletes anything else and removes what it wrote when that is no longer
// desired.
//
// One writer per host root: callers take Root.Lock, an flock on
// var/lib/nodetrust/lock (opened without following symlinks, holding "pid
// N (command)" of its holder), before reading the record and release it
// after the last write. Unlock removes the lock file and var/lib/nodetrust
// when no record is left, so an uninstalled host keeps nothing.
//
// Kills at any system call are survivable: before writing, Apply records
// the intent (every file about to be written, with the content it is about
// to get, and each merged file's original bytes); a file holding the last
// confirmed content, the pending one or, for a merge, the original, is
// nodetrust's, and a Merger recognises nodetrust's generated files without
// a record. At the start of each Apply, temporary files of killed runs are
// swept from every managed directory (recorded directories, those holding
// recorded files, and the record's own). Created directories are 0755 and
// files 0644 whatever the umask; a file written over someone's keeps its
// owner and mode.
//
// The package is laid out by what each part does:
//
//   - hostfs.go: Root, opening and reading below it without symlinks.
//   - ops.go: the system calls that change the host: mkdir, remove, the
//     sweep of temporary files, and staged writes committed in batches.
//   - lock.go: Root.Lock, the one-writer lock.
//   - state.go: the ownership record (State, Owned, MergeState, Pending),
//     LoadState, ClearRestarts and saving it.
//   - apply.go: the API of an Apply (File, Merger, Creator, Renderer,
//     Options, Result) and Apply itself, which plans and executes in
//     phases: plain files, the intent, their writes, Late files and
//     removals, the intent, their writes, removals, refresh, the record.
//   - ownership.go: what a path is to nodetrust (an ownership: absent,
//     deleted, ownFile, lostRecord, createdMerge, mergedIntact,
//     mergedEdited, foreignMergeable, foreign), each case documented with
//     what nodetrust does about it.
//   - plan.go: the planner, which dispatches on the ownership of each
//     desired path (planFile) and each one no longer desired (planRemoval)
//     to writeOps and removeOps.
//   - execute.go: carrying the plan out: the sweep, the intent, the writes
//     and removals, empty directories, the refresh.
package hostfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Root is a host root directory, such as "/" on a node or "/host" in the
// agent's container, or a temporary directory in tests.
type Root struct {
	dir string
	fd  int // O_PATH descriptor of dir
	// noOpenat2 is set when the kernel lacks openat2 (Linux < 5.6).
	noOpenat2 bool
	// swept: an Apply has swept temporary files of killed runs.
	swept bool
}

// Open opens the host root at dir.
func Open(dir string) (*Root, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open host root %s: %w", dir, err)
	}
	return &Root{dir: dir, fd: fd}, nil
}

// Close releases the root.
func (r *Root) Close() error { return unix.Close(r.fd) }

// Dir returns the host root's directory as given to Open.
func (r *Root) Dir() string { return r.dir }

// IsDir reports whether rel is an existing directory reached without
// following symlinks.
func (r *Root) IsDir(rel string) bool {
	fd, err := r.open(rel, unix.O_PATH|unix.O_DIRECTORY, false)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// ExistsInRoot reports whether rel exists, following symlinks as
// ReadFileInRoot does.
func (r *Root) ExistsInRoot(rel string) bool {
	fd, err := r.open(rel, unix.O_PATH, true)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// Readlink returns the target of the symlink at rel, whose parent is
// reached without symlinks.
func (r *Root) Readlink(rel string) (string, error) {
	if err := checkClean(rel); err != nil || rel == "." {
		return "", fmt.Errorf("%q is not a clean path inside the host root", rel)
	}
	dirfd, err := r.open(path.Dir(rel), unix.O_PATH|unix.O_DIRECTORY, false)
	if err != nil {
		return "", err
	}
	defer unix.Close(dirfd)
	target, err := readlinkat(dirfd, path.Base(rel))
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: rel, Err: err}
	}
	return target, nil
}

// ReadFile reads a regular file at rel; a symlink anywhere in rel is refused.
func (r *Root) ReadFile(rel string) ([]byte, error) {
	data, _, err := r.read(rel, false)
	return data, err
}

// ReadFileInRoot reads a file for information (os-release, a runtime's
// config), following symlinks as a chroot would: every target, absolute or
// relative, is resolved inside the root and can never leave it. Writes and
// deletes never follow symlinks.
func (r *Root) ReadFileInRoot(rel string) ([]byte, error) {
	data, _, err := r.read(rel, true)
	return data, err
}

// attrs are the permission bits and owner a replaced file keeps.
type attrs struct {
	mode     fs.FileMode
	uid, gid int
	// chown: give the written file uid and gid (those of the file it
	// replaces); a new file belongs to the process.
	chown bool
}

// read returns the content and attributes of the regular file at rel. A
// missing file is an error wrapping fs.ErrNotExist.
func (r *Root) read(rel string, inRoot bool) ([]byte, attrs, error) {
	fd, err := r.open(rel, unix.O_RDONLY|unix.O_NONBLOCK, inRoot)
	if err != nil {
		return nil, attrs{}, err
	}
	f := os.NewFile(uintptr(fd), path.Join(r.dir, rel))
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, attrs{}, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, attrs{}, fmt.Errorf("%s is not a regular file", rel)
	}
	at := attrs{mode: fs.FileMode(st.Mode & 0o7777).Perm(), uid: int(st.Uid), gid: int(st.Gid), chown: true}
	data := make([]byte, 0, st.Size+1)
	for {
		n, err := f.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if errors.Is(err, io.EOF) {
			return data, at, nil
		}
		if err != nil {
			return nil, attrs{}, err
		}
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
	}
}

// open opens rel below the root. Without inRoot, a symlink in any component
// is refused; with it, symlinks resolve as if the root were "/".
func (r *Root) open(rel string, flags int, inRoot bool) (int, error) {
	if err := checkClean(rel); err != nil {
		return -1, err
	}
	flags |= unix.O_CLOEXEC | unix.O_NOFOLLOW
	resolve := uint64(unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS)
	if inRoot {
		flags &^= unix.O_NOFOLLOW
		resolve = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS
	}
	if !r.noOpenat2 {
		fd, err := openat2(r.fd, rel, &unix.OpenHow{Flags: uint64(flags), Resolve: resolve})
		if inRoot && errors.Is(err, unix.ELOOP) {
			return -1, fmt.Errorf("%s: too many levels of symbolic links", rel)
		}
		if !errors.Is(err, unix.ENOSYS) {
			return fd, pathErr(rel, err)
		}
		r.noOpenat2 = true
	}
	if inRoot {
		resolved, err := r.resolve(rel)
		if err != nil {
			return -1, err
		}
		return r.open(resolved, flags&^unix.O_CLOEXEC&^unix.O_NOFOLLOW, false)
	}
	return r.walk(rel, flags)
}

// openat2 retries on EINTR and EAGAIN, which RESOLVE_* lookups may return
// under concurrent renames.
func openat2(dirfd int, p string, how *unix.OpenHow) (int, error) {
	for i := 0; ; i++ {
		fd, err := unix.Openat2(dirfd, p, how)
		if (errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN)) && i < 10 {
			continue
		}
		return fd, err
	}
}

// walk opens rel one component at a time, refusing symlinks, for kernels
// without openat2.
func (r *Root) walk(rel string, flags int) (int, error) {
	parts := strings.Split(rel, "/")
	cur, err := unix.Dup(r.fd)
	if err != nil {
		return -1, err
	}
	for i, comp := range parts {
		var st unix.Stat_t
		if err := unix.Fstatat(cur, comp, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			unix.Close(cur)
			return -1, pathErr(rel, err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			unix.Close(cur)
			return -1, pathErr(rel, unix.ELOOP)
		}
		f := unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if i == len(parts)-1 {
			f = flags
		}
		next, err := unix.Openat(cur, comp, f, 0)
		unix.Close(cur)
		if err != nil {
			return -1, pathErr(rel, err)
		}
		cur = next
	}
	return cur, nil
}

// maxLinks bounds symlink resolution, as the kernel's ELOOP limit does.
const maxLinks = 40

// resolve returns rel with every symlink replaced by its target taken
// relative to the root, where ".." never climbs above the root. Only used
// without openat2's RESOLVE_IN_ROOT.
func (r *Root) resolve(rel string) (string, error) {
	var done []string
	todo := strings.Split(rel, "/")
	for links := 0; len(todo) > 0; {
		comp := todo[0]
		todo = todo[1:]
		switch comp {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		cur := strings.Join(append(done, comp), "/")
		dirfd, err := r.open(path.Dir(cur), unix.O_PATH|unix.O_DIRECTORY, false)
		if err != nil {
			return "", err
		}
		target, err := readlinkat(dirfd, comp)
		unix.Close(dirfd)
		if err != nil { // not a symlink, or missing: the open reports it
			done = append(done, comp)
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("%s: too many levels of symbolic links", rel)
		}
		if path.IsAbs(target) {
			done = nil
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	if len(done) == 0 {
		return "", fmt.Errorf("%s resolves to the host root itself", rel)
	}
	return strings.Join(done, "/"), nil
}

func readlinkat(dirfd int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// checkClean refuses a relative path that is not clean or leaves the root.
func checkClean(rel string) error {
	if rel == "." {
		return nil
	}
	if rel == "" || path.IsAbs(rel) || path.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("%q is not a clean path inside the host root", rel)
	}
	return nil
}

// pathErr turns syscall errors into messages that name the path.
func pathErr(rel string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ELOOP):
		return fmt.Errorf("refusing to follow a symlink in %s", rel)
	case errors.Is(err, unix.EXDEV):
		return fmt.Errorf("%s leads out of the host root", rel)
	case errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("%s: a path component is not a directory", rel)
	default:
		return &fs.PathError{Op: "open", Path: rel, Err: err}
	}
}
