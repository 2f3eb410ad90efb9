package main

import "syscall"

// undumpable marks the process not dumpable (prctl PR_SET_DUMPABLE 0). A
// process of the same user, without CAP_SYS_PTRACE, then can no longer
// reach it through /proc/PID (root, cwd, fd, mem, environ) nor ptrace it:
// in a pod that shares its process namespace (lastcall.dev/signal, where
// the sidecar runs as the workers' user to signal them), a worker cannot
// write the preStop binary or the state files through
// /proc/PID/root/lastcall, which its own mount has read-only.
func undumpable() error {
	const prSetDumpable = 4
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetDumpable, 0, 0); errno != 0 {
		return errno
	}
	return nil
}
