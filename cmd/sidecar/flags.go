package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

func envDuration(getenv func(string) string, key string, def time.Duration) (time.Duration, error) {
	v := getenv(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return d, nil
}

func joinHostPort(host, port string) string {
	return net.JoinHostPort(strings.Trim(host, "[]"), port)
}

// signalByName returns the signal --signal accepts under name.
func signalByName(name string) (syscall.Signal, bool) {
	switch name {
	case "HUP":
		return syscall.SIGHUP, true
	case "INT":
		return syscall.SIGINT, true
	case "QUIT":
		return syscall.SIGQUIT, true
	case "USR1":
		return syscall.SIGUSR1, true
	case "USR2":
		return syscall.SIGUSR2, true
	case "TERM":
		return syscall.SIGTERM, true
	case "TSTP":
		return syscall.SIGTSTP, true
	case "CONT":
		return syscall.SIGCONT, true
	case "WINCH":
		return syscall.SIGWINCH, true
	}
	return 0, false
}

// parseSignal reads a signal name (TSTP, SIGTSTP, tstp) or number.
func parseSignal(s string) (os.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	if sig, ok := signalByName(strings.TrimPrefix(strings.ToUpper(s), "SIG")); ok {
		return sig, nil
	}
	return nil, fmt.Errorf("unknown signal %q (want HUP, INT, QUIT, USR1, USR2, TERM, TSTP, CONT, WINCH or a number)", s)
}
