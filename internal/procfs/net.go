package procfs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
)

// TCPListen is the kernel's TCP_LISTEN state as printed in net/tcp ("0A").
const TCPListen = 0x0A

// Socket is one row of /proc/<pid>/net/tcp or tcp6.
type Socket struct {
	Local  netip.AddrPort
	Remote netip.AddrPort
	State  uint8
	UID    uint32
	Inode  uint64
}

// Listener is a listening TCP socket owned by a process.
type Listener struct {
	// Network is "tcp4" or "tcp6" (the table the socket came from).
	Network string
	// Addr is the bound address: 0.0.0.0, ::, 127.0.0.1, ::1 or a pod IP.
	Addr  netip.Addr
	Port  uint16
	Inode uint64
}

// DialAddr returns the host:port to connect to from the same network
// namespace: the loopback address of the family for wildcard binds, else
// the bound address itself.
func (l Listener) DialAddr() string {
	a := l.Addr
	if a.IsUnspecified() {
		if l.Network == "tcp6" {
			a = netip.IPv6Loopback()
		} else {
			a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
	}
	return netip.AddrPortFrom(a.Unmap(), l.Port).String()
}

// ParseNetTCP parses /proc/net/tcp or /proc/net/tcp6 (the format is the
// same; the address width tells them apart).
func ParseNetTCP(r io.Reader) ([]Socket, error) {
	var out []Socket
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if n == 1 {
			if !bytes.Contains(line, []byte("local_address")) {
				return nil, fmt.Errorf("net/tcp: header %q: %w", line, ErrMalformed)
			}
			continue
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		s, err := parseSocketLine(string(line))
		if err != nil {
			return nil, fmt.Errorf("net/tcp line %d: %w", n, err)
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("net/tcp: %w: %w", ErrMalformed, err)
	}
	return out, nil
}

func parseSocketLine(line string) (Socket, error) {
	f := strings.Fields(line)
	// sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
	if len(f) < 10 {
		return Socket{}, fmt.Errorf("%d fields: %w", len(f), ErrMalformed)
	}
	var s Socket
	var err error
	if s.Local, err = parseHexAddrPort(f[1]); err != nil {
		return Socket{}, fmt.Errorf("local address: %w", err)
	}
	if s.Remote, err = parseHexAddrPort(f[2]); err != nil {
		return Socket{}, fmt.Errorf("remote address: %w", err)
	}
	st, err := strconv.ParseUint(f[3], 16, 8)
	if err != nil {
		return Socket{}, fmt.Errorf("state %q: %w", f[3], ErrMalformed)
	}
	s.State = uint8(st)
	uid, err := strconv.ParseUint(f[7], 10, 32)
	if err != nil {
		return Socket{}, fmt.Errorf("uid %q: %w", f[7], ErrMalformed)
	}
	s.UID = uint32(uid)
	if s.Inode, err = strconv.ParseUint(f[9], 10, 64); err != nil {
		return Socket{}, fmt.Errorf("inode %q: %w", f[9], ErrMalformed)
	}
	return s, nil
}

// parseHexAddrPort decodes "0100007F:1F90". The kernel prints each 32-bit
// word of the (network-order) address as a host-order integer, so the
// bytes are recovered by storing each word back in native byte order.
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok || (len(h) != 8 && len(h) != 32) || len(p) != 4 {
		return netip.AddrPort{}, fmt.Errorf("%q: %w", s, ErrMalformed)
	}
	raw, err := hex.DecodeString(h)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: %w", s, ErrMalformed)
	}
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: %w", p, ErrMalformed)
	}
	addr, _ := netip.AddrFromSlice(raw) // 4 or 16 bytes: cannot fail
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// SocketInodes returns the inodes of the sockets the process holds open,
// from the "socket:[N]" targets of /proc/<pid>/fd/*. Descriptors closed
// while reading are skipped.
func (p Proc) SocketInodes() (map[uint64]struct{}, error) {
	d, err := os.Open(p.Path("fd"))
	if err != nil {
		return nil, fmt.Errorf("procfs: pid %d fds: %w", p.PID, err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("procfs: pid %d fds: %w", p.PID, err)
	}
	out := make(map[uint64]struct{})
	for _, n := range names {
		target, err := os.Readlink(p.Path("fd", n))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("procfs: pid %d fd %s: %w", p.PID, n, err)
		}
		if ino, ok := ParseSocketLink(target); ok {
			out[ino] = struct{}{}
		}
	}
	return out, nil
}

// ParseSocketLink extracts N from a "socket:[N]" descriptor link target.
func ParseSocketLink(target string) (uint64, bool) {
	s, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "]")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(s, 10, 64)
	return ino, err == nil
}

// ListeningPorts returns the TCP sockets in LISTEN state that the process
// holds, IPv4 and IPv6, sorted by port then network. The net tables are the
// process's network namespace's; a missing tcp6 table (IPv6 disabled) is
// not an error.
func (p Proc) ListeningPorts() ([]Listener, error) {
	inodes, err := p.SocketInodes()
	if err != nil {
		return nil, err
	}
	if len(inodes) == 0 {
		return nil, nil
	}
	var out []Listener
	for _, t := range []struct{ file, network string }{{"tcp", "tcp4"}, {"tcp6", "tcp6"}} {
		b, err := readCapped(p.Path("net", t.file), netCap)
		if err != nil {
			if t.network == "tcp6" && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("procfs: pid %d: %w", p.PID, err)
		}
		socks, err := ParseNetTCP(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("procfs: pid %d net/%s: %w", p.PID, t.file, err)
		}
		out = appendListeners(out, socks, inodes, t.network)
	}
	slices.SortFunc(out, func(a, b Listener) int {
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return strings.Compare(a.Network, b.Network)
	})
	return out, nil
}

func appendListeners(out []Listener, socks []Socket, inodes map[uint64]struct{}, network string) []Listener {
	for _, s := range socks {
		if s.State != TCPListen {
			continue
		}
		if _, ok := inodes[s.Inode]; !ok {
			continue
		}
		out = append(out, Listener{Network: network, Addr: s.Local.Addr(), Port: s.Local.Port(), Inode: s.Inode})
	}
	return out
}
