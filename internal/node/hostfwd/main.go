// Command hostfwd runs on the test node and lets its pods reach a server on
// the host's loopback: it listens on the node's PORT, which pods reach at
// node.PodGateway (the node's side of their veth), and relays each connection to HostAlias:PORT.
// QEMU's user-mode network NATs only the VM's own address, so a pod's
// packets routed out of the VM would get no answer, and the node has no
// iptables to masquerade them.
//
// Usage: hostfwd LISTEN=TARGET ... (node.Start passes :PORT=HostAlias:PORT)
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hostfwd LISTEN=TARGET ...")
		os.Exit(2)
	}
	errs := make(chan error)
	for _, arg := range os.Args[1:] {
		listen, target, ok := strings.Cut(arg, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "hostfwd: %q is not LISTEN=TARGET\n", arg)
			os.Exit(2)
		}
		l, err := net.Listen("tcp", listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "hostfwd:", err)
			os.Exit(1)
		}
		go func() { errs <- relay(l, target) }()
	}
	fmt.Fprintln(os.Stderr, "hostfwd:", <-errs)
	os.Exit(1)
}

func relay(l net.Listener, target string) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			t, err := net.Dial("tcp", target)
			if err != nil {
				fmt.Fprintln(os.Stderr, "hostfwd:", err)
				return
			}
			defer t.Close()
			done := make(chan struct{})
			go func() { _, _ = io.Copy(t, c); _ = t.(*net.TCPConn).CloseWrite(); close(done) }()
			_, _ = io.Copy(c, t)
			_ = c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}
