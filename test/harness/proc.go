package harness

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Proc is a child process whose combined output goes to a log file.
type Proc struct {
	Name    string
	LogPath string
	Args    []string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// StartProc starts bin with args, output appended to logPath.
func StartProc(name, logPath, bin string, args ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Own process group, so a stray signal to the test does not hit it first
	// and so it can never outlive us unnoticed as part of our group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, Args: append([]string{bin}, args...), cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has exited, and its wait error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns the wait
// error (nil for exit 0), how long the exit took, and whether it had to kill.
func (p *Proc) Stop(grace time.Duration) (err error, took time.Duration, killed bool) {
	start := time.Now()
	select {
	case <-p.done:
		return p.err, 0, false
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err, time.Since(start), false
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return p.err, time.Since(start), true
}

// Tail returns the last n bytes of the process log.
func (p *Proc) Tail(n int) string { return tailFile(p.LogPath, n) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
