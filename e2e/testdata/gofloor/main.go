// Command gofloor is the floor of the sidecar's idle polling for a Go
// program: it sleeps one interval (time.Sleep, the runtime's cheapest
// timed wait) and preads the given files, and nothing else. Beside the C
// floor (pollfloor.c) it tells what the Go runtime alone costs per wakeup.
//
//	gofloor INTERVAL_MS FILE...
package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

func main() {
	ms, err := strconv.Atoi(os.Args[1])
	if err != nil || len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gofloor INTERVAL_MS FILE...")
		os.Exit(2)
	}
	var fds []int
	for _, p := range os.Args[2:] {
		fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fds = append(fds, fd)
	}
	var buf [4096]byte
	for {
		time.Sleep(time.Duration(ms) * time.Millisecond)
		for _, fd := range fds {
			if _, err := syscall.Pread(fd, buf[:], 0); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
}
