// Package craftport picks loopback ports for the members the Go test programs start.
//
// A port is taken below the kernel's ephemeral range (net.ipv4.ip_local_port_range), so no
// outgoing connection of any process on the machine can get it as its source port between this
// check and the member's bind. A freed ephemeral port can be: CI saw a member fail with "address
// already in use" on a port bound and released a moment before, while other tests opened
// thousands of connections. Ports handed out by this process are not handed out again.
package craftport

import (
	"fmt"
	"math/rand"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

var (
	mu    sync.Mutex
	given = map[int]bool{}
	// not the programs' seeded generators: a replayed schedule must not depend on which ports
	// happened to be free
	rng = rand.New(rand.NewSource(time.Now().UnixNano() ^ int64(os.Getpid())<<20))
)

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's default: 32768).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				return v
			}
		}
	}
	return 32768
}

// Free returns a loopback port that could be bound just now, below the ephemeral range when the
// range leaves room for it (else one the kernel picks).
func Free() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	if lo := ephemeralLow(); lo > 11000 {
		for try := 0; try < 1000; try++ {
			p := 10000 + rng.Intn(lo-10000)
			if given[p] {
				continue
			}
			if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
				l.Close()
				given[p] = true
				return p, nil
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	p := l.Addr().(*net.TCPAddr).Port
	given[p] = true
	return p, nil
}
