// Command leasebench measures etcd's Lease API and the lock recipe on a cluster (craft or etcd),
// with etcd's own Go client library (clientv3 3.4, Debian's golang-etcd-server-dev; built offline
// in GOPATH mode by scripts/bench-lease.sh, which runs it against craft and etcd side by side).
// One mode per run, one JSON line on stdout:
//
//	keepalive   -leases leases (TTL 60) kept alive over -streams raw LeaseKeepAlive streams
//	            (one connection each, round-robin over the endpoints), -window keep-alives in
//	            flight per stream: keep-alives answered per second. An answer with TTL <= 0 or
//	            for a lease with no keep-alive outstanding on that stream is an error (answers are
//	            matched by ID: a server may answer out of order).
//	grant       -concurrency goroutines (over -conns connections) each loop LeaseGrant (TTL 60)
//	            then LeaseRevoke: grant+revoke pairs per second, and the pair's latency.
//	lock-one    -clients clients (one connection and one session, TTL 10, each) loop
//	            Mutex.Lock + Unlock on one mutex: acquisitions per second and their latency
//	            (Lock call to Unlock answer), a handover per acquisition.
//	lock-many   the same, each client on its own mutex (no contention).
//
// Errors are counted, never retried silently; a run with errors is reported as such.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	pb "go.etcd.io/etcd/etcdserver/etcdserverpb"
	"go.etcd.io/etcd/pkg/logutil"
	"go.etcd.io/etcd/pkg/transport"
	"go.uber.org/zap"
)

var (
	flagEndpoints   = flag.String("endpoints", "", "client URLs, comma-separated")
	flagCACert      = flag.String("cacert", "", "CA certificate")
	flagCert        = flag.String("cert", "", "client certificate")
	flagKey         = flag.String("key", "", "client key")
	flagMode        = flag.String("mode", "keepalive", "keepalive, grant, lock-one or lock-many")
	flagDuration    = flag.Duration("duration", 10*time.Second, "measured time")
	flagLeases      = flag.Int("leases", 1000, "keepalive: leases kept alive")
	flagStreams     = flag.Int("streams", 8, "keepalive: keep-alive streams")
	flagWindow      = flag.Int("window", 64, "keepalive: keep-alives in flight per stream")
	flagConcurrency = flag.Int("concurrency", 64, "grant: goroutines")
	flagConns       = flag.Int("conns", 8, "grant: connections")
	flagClients     = flag.Int("clients", 16, "lock-*: clients")
)

type result struct {
	Mode      string  `json:"mode"`
	Ops       int64   `json:"ops"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	Errors    int64   `json:"errors"`
	P50ms     float64 `json:"p50_ms"`
	P99ms     float64 `json:"p99_ms"`
	Detail    string  `json:"detail"`
}

func die(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "leasebench: "+format+"\n", a...)
	os.Exit(1)
}

func newClient(eps []string) *clientv3.Client {
	tc, err := transport.TLSInfo{CertFile: *flagCert, KeyFile: *flagKey, TrustedCAFile: *flagCACert}.ClientConfig()
	if err != nil {
		die("TLS: %v", err)
	}
	lc := logutil.DefaultZapLoggerConfig
	lc.Level = zap.NewAtomicLevelAt(zap.FatalLevel)
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: tc, DialTimeout: 5 * time.Second, LogConfig: &lc})
	if err != nil {
		die("client %v: %v", eps, err)
	}
	return cli
}

// lat collects latencies (one slice per goroutine, merged at the end).
type lat struct {
	mu  sync.Mutex
	all []time.Duration
}

func (l *lat) add(d []time.Duration) { l.mu.Lock(); l.all = append(l.all, d...); l.mu.Unlock() }

func (l *lat) pct(p float64) float64 {
	if len(l.all) == 0 {
		return 0
	}
	sort.Slice(l.all, func(i, j int) bool { return l.all[i] < l.all[j] })
	return float64(l.all[int(p*float64(len(l.all)-1))].Microseconds()) / 1000
}

func main() {
	flag.Parse()
	eps := strings.Split(*flagEndpoints, ",")
	if *flagEndpoints == "" || *flagCACert == "" || *flagCert == "" || *flagKey == "" {
		die("-endpoints, -cacert, -cert and -key are required")
	}
	var r result
	switch *flagMode {
	case "keepalive":
		r = benchKeepAlive(eps)
	case "grant":
		r = benchGrant(eps)
	case "lock-one", "lock-many":
		r = benchLock(eps, *flagMode == "lock-one")
	default:
		die("unknown -mode %q", *flagMode)
	}
	r.Mode = *flagMode
	if r.Seconds > 0 {
		r.OpsPerSec = float64(r.Ops) / r.Seconds
	}
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func benchKeepAlive(eps []string) result {
	admin := newClient(eps)
	defer admin.Close()
	ids := make([]int64, *flagLeases)
	var wg sync.WaitGroup
	var next int64 = -1
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= len(ids) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				g, err := admin.Grant(ctx, 60)
				cancel()
				if err != nil {
					die("grant: %v", err)
				}
				ids[i] = int64(g.ID)
			}
		}()
	}
	wg.Wait()
	var answered, errs int64
	var measuring int32
	ctx, cancel := context.WithCancel(context.Background())
	clis := make([]*clientv3.Client, *flagStreams)
	for s := range clis {
		clis[s] = newClient([]string{eps[s%len(eps)]})
		defer clis[s].Close()
	}
	var done sync.WaitGroup
	for s := 0; s < *flagStreams; s++ {
		stream, err := pb.NewLeaseClient(clis[s].ActiveConnection()).LeaseKeepAlive(ctx)
		if err != nil {
			die("keep-alive stream: %v", err)
		}
		tokens := make(chan struct{}, *flagWindow)
		var mu sync.Mutex
		outstanding := map[int64]int{}
		done.Add(2)
		go func() { // receiver
			defer done.Done()
			for {
				resp, err := stream.Recv()
				if err != nil {
					return
				}
				// Matched by ID, not by order: a server may answer a stream's
				// keep-alives out of order (craft renews them concurrently; clientv3
				// matches answers by ID too).
				mu.Lock()
				sent := outstanding[resp.ID] > 0
				if sent {
					outstanding[resp.ID]--
				}
				mu.Unlock()
				if atomic.LoadInt32(&measuring) == 1 {
					if resp.TTL <= 0 || !sent {
						atomic.AddInt64(&errs, 1)
					} else {
						atomic.AddInt64(&answered, 1)
					}
				}
				<-tokens
			}
		}()
		go func(s int) { // sender: this stream's share of the leases, round and round
			defer done.Done()
			var mine []int64
			for j := s; j < len(ids); j += *flagStreams {
				mine = append(mine, ids[j])
			}
			if len(mine) == 0 {
				return
			}
			for k := 0; ; k++ {
				id := mine[k%len(mine)]
				select {
				case tokens <- struct{}{}:
				case <-ctx.Done():
					return
				}
				mu.Lock()
				outstanding[id]++
				mu.Unlock()
				if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
					return
				}
			}
		}(s)
	}
	time.Sleep(time.Second) // warm-up, not measured
	atomic.StoreInt32(&measuring, 1)
	t0 := time.Now()
	time.Sleep(*flagDuration)
	atomic.StoreInt32(&measuring, 0)
	el := time.Since(t0)
	cancel()
	done.Wait()
	// revoke the leases (not measured)
	for _, id := range ids {
		c, cc := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = admin.Revoke(c, clientv3.LeaseID(id))
		cc()
	}
	return result{Ops: answered, Seconds: el.Seconds(), Errors: errs,
		Detail: fmt.Sprintf("%d leases, %d streams, window %d", *flagLeases, *flagStreams, *flagWindow)}
}

func benchGrant(eps []string) result {
	clis := make([]*clientv3.Client, *flagConns)
	for i := range clis {
		e := append([]string{}, eps[i%len(eps):]...)
		clis[i] = newClient(append(e, eps[:i%len(eps)]...))
		defer clis[i].Close()
	}
	var ops, errs int64
	var l lat
	deadline := time.Now().Add(*flagDuration)
	t0 := time.Now()
	var wg sync.WaitGroup
	for g := 0; g < *flagConcurrency; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			cli := clis[g%len(clis)]
			var mine []time.Duration
			for time.Now().Before(deadline) {
				s := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				gr, err := cli.Grant(ctx, 60)
				if err == nil {
					_, err = cli.Revoke(ctx, gr.ID)
				}
				cancel()
				if err != nil {
					atomic.AddInt64(&errs, 1)
					continue
				}
				mine = append(mine, time.Since(s))
				atomic.AddInt64(&ops, 1)
			}
			l.add(mine)
		}(g)
	}
	wg.Wait()
	return result{Ops: ops, Seconds: time.Since(t0).Seconds(), Errors: errs, P50ms: l.pct(0.5), P99ms: l.pct(0.99),
		Detail: fmt.Sprintf("concurrency %d over %d connections", *flagConcurrency, *flagConns)}
}

func benchLock(eps []string, one bool) result {
	n := *flagClients
	clis := make([]*clientv3.Client, n)
	sess := make([]*concurrency.Session, n)
	for i := range clis {
		e := append([]string{}, eps[i%len(eps):]...)
		clis[i] = newClient(append(e, eps[:i%len(eps)]...))
		defer clis[i].Close()
		s, err := concurrency.NewSession(clis[i], concurrency.WithTTL(10))
		if err != nil {
			die("session: %v", err)
		}
		sess[i] = s
		defer s.Close()
	}
	var ops, errs int64
	var l lat
	deadline := time.Now().Add(*flagDuration)
	t0 := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		name := "bench-lock/one"
		if !one {
			name = fmt.Sprintf("bench-lock/m%d", i)
		}
		wg.Add(1)
		go func(i int, name string) {
			defer wg.Done()
			m := concurrency.NewMutex(sess[i], name)
			var mine []time.Duration
			for time.Now().Before(deadline) {
				s := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := m.Lock(ctx)
				if err == nil {
					err = m.Unlock(ctx)
				}
				cancel()
				if err != nil {
					atomic.AddInt64(&errs, 1)
					continue
				}
				mine = append(mine, time.Since(s))
				atomic.AddInt64(&ops, 1)
			}
			l.add(mine)
		}(i, name)
	}
	wg.Wait()
	what := "one mutex"
	if !one {
		what = fmt.Sprintf("%d mutexes", n)
	}
	return result{Ops: ops, Seconds: time.Since(t0).Seconds(), Errors: errs, P50ms: l.pct(0.5), P99ms: l.pct(0.99),
		Detail: fmt.Sprintf("%d clients on %s", n, what)}
}
