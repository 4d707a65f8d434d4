// Package faults is nodetrust's fault-injection suite, run on the built
// binary as real processes: apply killed at each system call that writes
// (strace's SIGKILL injection), overlapping applies on one host root, a
// full disk and a file name the kernel refuses. After each fault the next
// runs must converge, the files that configure a registry must name only
// files in place, and removing everything must give back the host as it
// was, byte for byte, with owners and modes. See README.md.
package faults
