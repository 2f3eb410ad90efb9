package fleet

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// Yield sets the nice value of every thread of this process to nice, so
// that the processes it started before (the control plane, KWOK) get the
// CPU first when both want it; threads started later inherit it. Raising
// a nice value needs no privilege. On Linux a nice value is per thread,
// hence the walk over /proc/self/task.
func Yield(nice int) error {
	if nice == 0 {
		return nil
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("yield: %w", err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); err != nil && err != syscall.ESRCH {
			return fmt.Errorf("yield: nice %d for thread %d: %w", nice, tid, err)
		}
	}
	return nil
}
