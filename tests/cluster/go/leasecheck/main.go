// Command leasecheck checks etcd's Lease API and the concurrency recipes built on it (issue 16)
// with etcd's own Go client library (clientv3 and clientv3/concurrency from etcd 3.4, Debian's
// golang-etcd-server-dev) against a real 3-member cluster over mutual TLS: craftd by default, or
// Debian's etcd 3.4 with -target etcd (the reference every expectation here was checked against).
// tests/cluster/go_lease_test.sh builds it (GOPATH mode, offline), makes the certificates and runs
// it; this program starts, kills (-9) and restarts the members itself.
//
// The scenarios (every wait is a bounded poll of a condition; nothing waits a fixed time):
//
//	(a) A lock that counts. -clients clients loop: concurrency.NewSession (TTL -session-ttl),
//	    Mutex.Lock, then three transactions, each conditioned on the mutex's own key still existing
//	    with its create revision (Mutex.IsOwner): claim (put lc/holder = a nonce), increment (read
//	    lc/counter, then put counter+1 if also lc/holder is still our nonce), release (put
//	    lc/holder = "" if it is still our nonce); Unlock, Close. An increment counts as a success
//	    only when its transaction was acknowledged as succeeded; one that failed with an error may
//	    or may not have taken effect (a kill can cut the answer off) and counts as ambiguous. While
//	    they run, members are killed -9 and restarted (-kills rounds: the leader, a follower chosen
//	    by the seed, the leader, ...). Checks: the final counter is in [successes, successes +
//	    ambiguous]; no transaction ever found lc/holder overwritten while its own mutex key still
//	    existed (the transaction reads both atomically in its else branch: another client wrote
//	    the holder key while we held the lock = mutual exclusion violated); every client got the
//	    lock at least once. An increment whose mutex key had gone (our session's lease expired
//	    during a kill) is "lost", neither a success nor a violation.
//	(b) -leases leases (TTL -mass-ttl) each with one key, made by 64 goroutines while one putter
//	    keeps putting. While they are made, 8 raw keep-alive streams keep the ones made so far
//	    alive (a pass every TTL/3), then one last pass and nothing more: they expire together.
//	    Checks: no key is gone before its lease's grant began (or its newest answered keep-alive
//	    was sent) + TTL (every poll of the key count must see at least the keys that must still
//	    be there), every key is gone by the end of the last pass + TTL + election timeout +
//	    1.5 x leases/-revoke-rate seconds + 2 s, the putter's longest gap between acknowledged puts
//	    from the first grant until all keys are gone is under -max-gap, keep-alive answers come
//	    in order, and the leases are gone from LeaseLeases and TimeToLive.
//	(c) A lease kept alive by the library's KeepAlive across kill -9 of the member serving the
//	    keep-alive stream (the member_id of its latest response) and then of the leader: the key
//	    is there in every read for 3 x TTL after each kill, keep-alives are answered again, and
//	    once KeepAlive is canceled the key goes within TTL + election timeout + 1 s.
//	(d) Bad input on the raw gRPC Lease API: a Grant with an ID that exists gets "etcdserver:
//	    lease already exists" (FailedPrecondition), the ID can be granted again once revoked, a
//	    keep-alive of an unknown ID is answered with TTL 0; a LeaseKeepAlive stream that sends
//	    keep-alives as fast as it can and never reads an answer does not hurt the server: other
//	    clients' puts and keep-alives are answered within -max-gap meanwhile, member memory stays
//	    bounded, and after the stream is canceled the lease still works.
//
// Output: "ok: ..." and "FAIL: ..." lines, then "N failure(s)"; exit status 1 on any failure.
// The seed (-seed, printed) picks the followers killed; rerun with it to replay the schedule.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"craftport"
	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	pb "go.etcd.io/etcd/etcdserver/etcdserverpb"
	"go.etcd.io/etcd/pkg/logutil"
	"go.etcd.io/etcd/pkg/transport"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	flagTarget     = flag.String("target", "craft", "craft (run -craftd) or etcd (run -etcd)")
	flagCraftd     = flag.String("craftd", "", "the craftd binary")
	flagEtcd       = flag.String("etcd", "etcd", "the etcd binary (-target etcd)")
	flagCerts      = flag.String("certs", "", "certificate directory (craft-certs): ca.pem, client.pem, n1.pem ...")
	flagDir        = flag.String("dir", "", "a scratch directory for the members' data and logs")
	flagSeed       = flag.Int64("seed", 0, "seed of the kill schedule (0: from the clock)")
	flagClients    = flag.Int("clients", 8, "(a) lock clients")
	flagSessionTTL = flag.Int("session-ttl", 2, "(a) the lock sessions' TTL, seconds")
	flagKills      = flag.Int("kills", 4, "(a) kill -9 rounds during the lock run")
	flagLeases     = flag.Int("leases", 10000, "(b) leases expiring together")
	flagMassTTL    = flag.Int64("mass-ttl", 3, "(b) their TTL, seconds")
	flagRevokeRate = flag.Int("revoke-rate", 1000, "(b) expired leases the server revokes per second (craft's --lease-revoke-rate)")
	flagMaxGap     = flag.Duration("max-gap", 2*time.Second, "(b, d) the longest a putter may go without an acknowledged put")
	flagSlack      = flag.Duration("expiry-slack", 2*time.Second, "(b) added to the bound on when the last expired key is gone")
	flagKATTL      = flag.Int64("keepalive-ttl", 5, "(c) the kept lease's TTL, seconds")
	flagHB         = flag.Int("heartbeat", 100, "members' --heartbeat-interval, ms")
	flagET         = flag.Int("election", 1000, "members' --election-timeout, ms")
	flagOnly       = flag.String("only", "abcd", "the scenarios to run")
	flagBudget     = flag.Duration("budget", 400*time.Second, "fail if the whole run takes longer")
)

var (
	outMu sync.Mutex
	fails int
)

func ok(format string, a ...interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf("ok: "+format+"\n", a...)
}

func bad(format string, a ...interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf("FAIL: "+format+"\n", a...)
	fails++
}

func note(format string, a ...interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf(format+"\n", a...)
}

func failures() int {
	outMu.Lock()
	defer outMu.Unlock()
	return fails
}

// ---- members ----------------------------------------------------------------------------------

type member struct {
	name         string
	cport, pport int
	id           uint64
	log          string

	// guarded by procMu
	cmd     *exec.Cmd
	expect  bool
	exited  chan struct{}
	running bool
	started bool
}

var (
	members [3]*member
	procMu  sync.Mutex
	cluster string
)

func ep(i int) string { return fmt.Sprintf("https://127.0.0.1:%d", members[i].cport) }

func allEps() []string { return []string{ep(0), ep(1), ep(2)} }

func freePort() int {
	p, err := craftport.Free()
	if err != nil {
		die("no free port: %v", err)
	}
	return p
}

// start runs member i (a restart when it has run: same data directory).
func start(i int) {
	m := members[i]
	c := *flagCerts
	args := []string{
		"--name", m.name, "--data-dir", filepath.Join(*flagDir, m.name),
		"--listen-client-urls", ep(i), "--advertise-client-urls", ep(i),
		"--listen-peer-urls", fmt.Sprintf("https://127.0.0.1:%d", m.pport),
		"--initial-advertise-peer-urls", fmt.Sprintf("https://127.0.0.1:%d", m.pport),
		"--initial-cluster", cluster,
		"--heartbeat-interval", strconv.Itoa(*flagHB), "--election-timeout", strconv.Itoa(*flagET),
		"--cert-file", filepath.Join(c, m.name+".pem"), "--key-file", filepath.Join(c, m.name+"-key.pem"),
		"--trusted-ca-file", filepath.Join(c, "ca.pem"),
		"--peer-cert-file", filepath.Join(c, m.name+".pem"), "--peer-key-file", filepath.Join(c, m.name+"-key.pem"),
		"--peer-trusted-ca-file", filepath.Join(c, "ca.pem"),
	}
	bin := *flagCraftd
	if *flagTarget == "etcd" {
		bin = *flagEtcd
		args = append(args, "--client-cert-auth", "--peer-client-cert-auth", "--initial-cluster-state", "new",
			"--logger", "zap", "--log-outputs", "stderr")
	}
	f, err := os.OpenFile(m.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		die("log %s: %v", m.log, err)
	}
	defer f.Close()
	fmt.Fprintf(f, "=== leasecheck: start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		die("start %s: %v", m.name, err)
	}
	exited := make(chan struct{})
	procMu.Lock()
	m.cmd, m.expect, m.exited, m.running, m.started = cmd, false, exited, true, true
	procMu.Unlock()
	go func() {
		err := cmd.Wait()
		procMu.Lock()
		m.running = false
		unexpected := !m.expect
		procMu.Unlock()
		if unexpected {
			bad("%s (pid %d) exited on its own: %v", m.name, cmd.Process.Pid, err)
		}
		close(exited)
	}()
}

func kill9(i int) {
	m := members[i]
	procMu.Lock()
	if !m.running {
		procMu.Unlock()
		return
	}
	m.expect = true
	cmd, exited := m.cmd, m.exited
	procMu.Unlock()
	_ = cmd.Process.Kill()
	<-exited
}

func running(i int) bool {
	procMu.Lock()
	defer procMu.Unlock()
	return members[i].running
}

func pid(i int) int {
	procMu.Lock()
	defer procMu.Unlock()
	if members[i].cmd == nil || !members[i].running {
		return 0
	}
	return members[i].cmd.Process.Pid
}

func rssMiB(i int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid(i)))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb / 1024
			}
		}
	}
	return 0
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

type putErr struct {
	at  time.Time
	err string
}

// explainGap prints what happened during a putter's gap [from, to]: the putter's errors then,
// and every member's log lines stamped within it (a leader change, a slow fdatasync or apply, a
// snapshot), so a failure on a loaded CI machine says whether the cluster stalled or the
// machine did.
func explainGap(t0, from, to time.Time, errs []putErr) {
	note("gap: from %s to %s after the start (%s to %s)", from.Sub(t0).Round(time.Millisecond),
		to.Sub(t0).Round(time.Millisecond), from.UTC().Format("15:04:05.000"), to.UTC().Format("15:04:05.000"))
	for _, e := range errs {
		if !e.at.Before(from) && !e.at.After(to) {
			note("gap: put failed at %s: %s", e.at.Sub(t0).Round(time.Millisecond), e.err)
		}
	}
	for _, m := range members {
		if m == nil {
			continue
		}
		b, err := os.ReadFile(m.log)
		if err != nil {
			continue
		}
		shown := 0
		for _, line := range strings.Split(string(b), "\n") {
			var rec struct {
				Ts string `json:"ts"`
			}
			if json.Unmarshal([]byte(line), &rec) != nil {
				continue
			}
			ts, err := time.Parse(time.RFC3339Nano, rec.Ts)
			if err != nil || ts.Before(from.Add(-200*time.Millisecond)) || ts.After(to.Add(200*time.Millisecond)) {
				continue
			}
			if shown++; shown > 40 {
				note("gap: %s: more lines in the window not shown", m.name)
				break
			}
			note("gap: %s: %s", m.name, line)
		}
	}
}

func killAll() {
	for i := range members {
		if members[i] != nil {
			kill9(i)
		}
	}
}

func die(format string, a ...interface{}) {
	bad(format, a...)
	killAll()
	for _, m := range members {
		if m != nil {
			fmt.Printf("--- %s.log (last 20 lines)\n%s\n", m.name, tail(m.log, 20))
		}
	}
	fmt.Printf("%d failure(s)\n", failures())
	os.Exit(1)
}

// ---- clients ----------------------------------------------------------------------------------

func newClient(eps []string) *clientv3.Client {
	tlsInfo := transport.TLSInfo{
		CertFile:      filepath.Join(*flagCerts, "client.pem"),
		KeyFile:       filepath.Join(*flagCerts, "client-key.pem"),
		TrustedCAFile: filepath.Join(*flagCerts, "ca.pem"),
	}
	tc, err := tlsInfo.ClientConfig()
	if err != nil {
		die("client TLS: %v", err)
	}
	lc := logutil.DefaultZapLoggerConfig
	lc.Level = zap.NewAtomicLevelAt(zap.FatalLevel)
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: tc, DialTimeout: 5 * time.Second, LogConfig: &lc})
	if err != nil {
		die("client %v: %v", eps, err)
	}
	return cli
}

func ctxT(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// waitFor polls cond every 10 ms until it holds (true) or timeout passes (false).
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leader: the index of the member every running member that answers names as leader (at least
// two answering), or -1.
func leader(cli *clientv3.Client) int {
	votes, answers := map[uint64]int{}, 0
	for i := range members {
		if !running(i) {
			continue
		}
		ctx, cancel := ctxT(time.Second)
		st, err := cli.Status(ctx, ep(i))
		cancel()
		if err != nil {
			continue
		}
		answers++
		votes[st.Leader]++
	}
	for i, m := range members {
		if answers >= 2 && votes[m.id] == answers && running(i) {
			return i
		}
	}
	return -1
}

func waitLeader(cli *clientv3.Client, what string) int {
	l := -1
	if !waitFor(30*time.Second, func() bool { l = leader(cli); return l >= 0 }) {
		die("%s: no leader within 30 s", what)
	}
	return l
}

func memberIndex(id uint64) int {
	for i, m := range members {
		if m.id == id {
			return i
		}
	}
	return -1
}

// waitUp waits until member i answers Status on its own endpoint.
func waitUp(cli *clientv3.Client, i int) bool {
	return waitFor(30*time.Second, func() bool {
		ctx, cancel := ctxT(time.Second)
		defer cancel()
		_, err := cli.Status(ctx, ep(i))
		return err == nil
	})
}

func since(t time.Time) string { return fmt.Sprintf("%d ms", time.Since(t).Milliseconds()) }

// ---- (a) the lock counter ----------------------------------------------------------------------

type lockStats struct {
	mu                                      sync.Mutex
	succ                                    []int // per client
	ambiguous, lost, lockErrs, sessErrs     int
	claimErrs, violations, releaseAmbiguous int
	total                                   int64 // successes, for the kill schedule's progress waits
	violationText                           []string
}

func lockWorker(w int, cli *clientv3.Client, st *lockStats, stop *int32, wg *sync.WaitGroup) {
	defer wg.Done()
	for iter := 0; atomic.LoadInt32(stop) == 0; iter++ {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(*flagSessionTTL))
		if err != nil {
			st.mu.Lock()
			st.sessErrs++
			st.mu.Unlock()
			time.Sleep(50 * time.Millisecond) // a back-off while the cluster has no leader
			continue
		}
		lockOnce(w, iter, cli, s, st)
		_ = s.Close() // revokes the lease (bounded by the session's TTL)
	}
}

func lockOnce(w, iter int, cli *clientv3.Client, s *concurrency.Session, st *lockStats) {
	m := concurrency.NewMutex(s, "lc/lock")
	ctx, cancel := ctxT(10 * time.Second)
	defer cancel()
	if err := m.Lock(ctx); err != nil {
		st.mu.Lock()
		st.lockErrs++
		st.mu.Unlock()
		return
	}
	defer func() {
		uctx, ucancel := ctxT(3 * time.Second)
		_ = m.Unlock(uctx)
		ucancel()
	}()
	nonce := fmt.Sprintf("c%d.%d", w, iter)
	own := m.IsOwner()
	myKey := m.Key()
	holderIs := clientv3.Compare(clientv3.Value("lc/holder"), "=", nonce)
	// checkElse: the transaction's conditions failed; tell lost (our key went: the session's lease
	// expired) from a violation (our key is there, yet the holder key is not our nonce).
	checkElse := func(step string, r *clientv3.TxnResponse) {
		keyThere := len(r.Responses[0].GetResponseRange().Kvs) > 0
		holder := ""
		if kvs := r.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
			holder = string(kvs[0].Value)
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		if keyThere && step != "claim" {
			st.violations++
			st.violationText = append(st.violationText, fmt.Sprintf("%s: %s held %s (rev %d) but lc/holder was %q at revision %d",
				step, nonce, myKey, m.Header().Revision, holder, r.Header.Revision))
		} else {
			st.lost++
		}
	}
	elseOps := []clientv3.Op{clientv3.OpGet(myKey), clientv3.OpGet("lc/holder")}
	// claim
	r, err := cli.Txn(ctx).If(own).Then(clientv3.OpPut("lc/holder", nonce)).Else(elseOps...).Commit()
	if err != nil {
		st.mu.Lock()
		st.claimErrs++
		st.mu.Unlock()
		return
	}
	if !r.Succeeded {
		checkElse("claim", r)
		return
	}
	// read, increment
	g, err := cli.Get(ctx, "lc/counter")
	if err != nil {
		st.mu.Lock()
		st.claimErrs++
		st.mu.Unlock()
		return
	}
	n := 0
	if len(g.Kvs) > 0 {
		n, _ = strconv.Atoi(string(g.Kvs[0].Value))
	}
	r, err = cli.Txn(ctx).If(own, holderIs).Then(clientv3.OpPut("lc/counter", strconv.Itoa(n+1))).Else(elseOps...).Commit()
	if err != nil {
		st.mu.Lock()
		st.ambiguous++
		st.mu.Unlock()
		return
	}
	if !r.Succeeded {
		checkElse("increment", r)
		return
	}
	st.mu.Lock()
	st.succ[w]++
	st.mu.Unlock()
	atomic.AddInt64(&st.total, 1)
	// release
	r, err = cli.Txn(ctx).If(own, holderIs).Then(clientv3.OpPut("lc/holder", "")).Else(elseOps...).Commit()
	if err != nil {
		st.mu.Lock()
		st.releaseAmbiguous++
		st.mu.Unlock()
		return
	}
	if !r.Succeeded {
		checkElse("release", r)
	}
}

func scenarioLock(admin *clientv3.Client, rng *rand.Rand) {
	note("--- (a) lock counter: %d clients, session TTL %d s, %d kill rounds", *flagClients, *flagSessionTTL, *flagKills)
	st := &lockStats{succ: make([]int, *flagClients)}
	var stop int32
	var wg sync.WaitGroup
	clis := make([]*clientv3.Client, *flagClients)
	for w := range clis {
		eps := allEps()
		rng.Shuffle(len(eps), func(a, b int) { eps[a], eps[b] = eps[b], eps[a] })
		clis[w] = newClient(eps)
		wg.Add(1)
		go lockWorker(w, clis[w], st, &stop, &wg)
	}
	t0 := time.Now()
	progress := func(n int64, what string) {
		base := atomic.LoadInt64(&st.total)
		if !waitFor(40*time.Second, func() bool { return atomic.LoadInt64(&st.total) >= base+n }) {
			bad("lock: no %d increments within 40 s %s (%d so far)", n, what, atomic.LoadInt64(&st.total))
		}
	}
	progress(10, "before the kills")
	for k := 0; k < *flagKills; k++ {
		l := waitLeader(admin, "lock")
		victim := l
		if k%2 == 1 {
			victim = (l + 1 + rng.Intn(2)) % 3
		}
		role := "leader"
		if victim != l {
			role = "follower"
		}
		kt := time.Now()
		kill9(victim)
		progress(5, fmt.Sprintf("after kill -9 of the %s %s", role, members[victim].name))
		note("round %d: killed the %s %s, 5 increments %s later", k+1, role, members[victim].name, since(kt))
		start(victim)
		if !waitUp(admin, victim) {
			bad("lock: %s did not come back", members[victim].name)
		}
		progress(5, fmt.Sprintf("after %s's restart", members[victim].name))
	}
	atomic.StoreInt32(&stop, 1)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		bad("lock: the clients did not stop within 60 s")
	}
	for _, c := range clis {
		c.Close()
	}
	ctx, cancel := ctxT(5 * time.Second)
	g, err := admin.Get(ctx, "lc/counter")
	cancel()
	if err != nil {
		bad("lock: read the counter: %v", err)
		return
	}
	counter := 0
	if len(g.Kvs) > 0 {
		counter, _ = strconv.Atoi(string(g.Kvs[0].Value))
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	succ, minPer := 0, -1
	for _, s := range st.succ {
		succ += s
		if minPer < 0 || s < minPer {
			minPer = s
		}
	}
	note("lock: %s: counter %d, successes %d (per client %v), ambiguous %d, lost %d, lock errors %d, session errors %d,"+
		" claim/read errors %d, ambiguous releases %d", since(t0), counter, succ, st.succ, st.ambiguous, st.lost,
		st.lockErrs, st.sessErrs, st.claimErrs, st.releaseAmbiguous)
	if counter >= succ && counter <= succ+st.ambiguous {
		ok("lock: counter %d in [successes %d, successes + ambiguous %d] across %d kill rounds", counter, succ, succ+st.ambiguous, *flagKills)
	} else {
		bad("lock: counter %d outside [successes %d, successes + ambiguous %d]: increments lost or doubled", counter, succ, succ+st.ambiguous)
	}
	if st.violations == 0 {
		ok("lock: no client found lc/holder overwritten while its own mutex key existed")
	} else {
		bad("lock: mutual exclusion violated %d times: %s", st.violations, strings.Join(st.violationText, "; "))
	}
	if minPer >= 1 {
		ok("lock: every client held the lock (fewest successes: %d)", minPer)
	} else {
		bad("lock: a client never got the lock: %v", st.succ)
	}
}

// ---- (b) many leases expiring together ---------------------------------------------------------

// refresher keeps its shard of the leases granted so far (index % shards == shard) alive with one
// raw LeaseKeepAlive stream (passes over them until stopped, then one last pass), so that all of
// them expire together once it stops. It records, per lease, the send time of the newest
// keep-alive answered with TTL > 0: the lease cannot expire before that + TTL.
type refresher struct {
	stream    pb.Lease_LeaseKeepAliveClient
	shard     int
	shards    int
	mu        sync.Mutex
	fifo      []refreshSent // sent, not yet answered (a stream answers in order)
	refreshed []int64       // Unix ns, atomically
	answered  int64
	mismatch  int64
}

type refreshSent struct {
	i  int
	id int64
	at int64
}

func (r *refresher) recvLoop(done chan<- struct{}) {
	defer close(done)
	for {
		resp, err := r.stream.Recv()
		if err != nil {
			return
		}
		r.mu.Lock()
		if len(r.fifo) == 0 {
			r.mu.Unlock()
			atomic.AddInt64(&r.mismatch, 1)
			continue
		}
		s := r.fifo[0]
		r.fifo = r.fifo[1:]
		r.mu.Unlock()
		if resp.ID != s.id {
			atomic.AddInt64(&r.mismatch, 1)
			continue
		}
		atomic.AddInt64(&r.answered, 1)
		if resp.TTL > 0 && atomic.LoadInt64(&r.refreshed[s.i]) < s.at {
			atomic.StoreInt64(&r.refreshed[s.i], s.at)
		}
	}
}

// pass sends one keep-alive for every lease granted so far (ids[i] != 0); false on a stream error.
func (r *refresher) pass(ids []int64) bool {
	for i := r.shard; i < len(ids); i += r.shards {
		id := atomic.LoadInt64(&ids[i])
		if id == 0 {
			continue
		}
		r.mu.Lock()
		r.fifo = append(r.fifo, refreshSent{i, id, time.Now().UnixNano()})
		r.mu.Unlock()
		if err := r.stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
			return false
		}
	}
	return true
}

func scenarioMassExpiry(admin *clientv3.Client) {
	n, ttl := *flagLeases, *flagMassTTL
	ttlNs := ttl * int64(time.Second)
	et := time.Duration(*flagET) * time.Millisecond
	note("--- (b) %d leases of %d s with a key each, kept alive while they are made, then none", n, ttl)
	// Unix nanoseconds, written by the granting goroutines and read by the poller (atomically).
	grantStart := make([]int64, n)
	putAck := make([]int64, n) // 0: not acknowledged (yet, or the put failed: the key may or may not exist)
	ids := make([]int64, n)
	// the putter
	putter := newClient(allEps())
	defer putter.Close()
	var pmu sync.Mutex
	var acks []time.Time
	var perrs []putErr // the putter's failures, for the report of a long gap (the newest 64)
	var pstop int32
	pdone := make(chan struct{})
	go func() {
		defer close(pdone)
		for seq := 0; atomic.LoadInt32(&pstop) == 0; seq++ {
			ctx, cancel := ctxT(5 * time.Second)
			_, err := putter.Put(ctx, "mx/putter", strconv.Itoa(seq))
			cancel()
			pmu.Lock()
			if err == nil {
				acks = append(acks, time.Now())
			} else {
				if len(perrs) == 64 {
					perrs = perrs[1:]
				}
				perrs = append(perrs, putErr{time.Now(), err.Error()})
			}
			pmu.Unlock()
		}
	}()
	// the refresher, on the leader (a follower would forward every keep-alive)
	rcli := newClient([]string{ep(waitLeader(admin, "mass"))})
	defer rcli.Close()
	rctx, rcancel := context.WithCancel(context.Background())
	defer rcancel()
	// several streams: a server may serve each stream's keep-alives one at a time
	const shards = 8
	refreshed := make([]int64, n)
	refs := make([]*refresher, shards)
	rdones := make([]chan struct{}, shards)
	for k := range refs {
		rs, err := pb.NewLeaseClient(rcli.ActiveConnection()).LeaseKeepAlive(rctx)
		if err != nil {
			bad("mass: keep-alive stream: %v", err)
			return
		}
		refs[k] = &refresher{stream: rs, shard: k, shards: shards, refreshed: refreshed}
		rdones[k] = make(chan struct{})
		go refs[k].recvLoop(rdones[k])
	}
	// the leases
	clis := make([]*clientv3.Client, 4)
	for i := range clis {
		clis[i] = newClient(allEps())
		defer clis[i].Close()
	}
	t0 := time.Now()
	var next int64 = -1
	var grantErrs, putErrs int64
	var wg sync.WaitGroup
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			cli := clis[g%len(clis)]
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= n {
					return
				}
				atomic.StoreInt64(&grantStart[i], time.Now().UnixNano())
				ctx, cancel := ctxT(10 * time.Second)
				gr, err := cli.Grant(ctx, ttl)
				if err != nil {
					cancel()
					atomic.AddInt64(&grantErrs, 1)
					continue
				}
				atomic.StoreInt64(&ids[i], int64(gr.ID))
				_, err = cli.Put(ctx, fmt.Sprintf("mx/k/%05d", i), "v", clientv3.WithLease(gr.ID))
				cancel()
				if err != nil {
					atomic.AddInt64(&putErrs, 1)
					continue
				}
				atomic.StoreInt64(&putAck[i], time.Now().UnixNano())
			}
		}(g)
	}
	made := make(chan struct{})
	go func() { wg.Wait(); close(made) }()
	refDone := make(chan struct{}) // closed after every refresher's last pass
	var lastPassEnd int64
	var rwg sync.WaitGroup
	for _, ref := range refs {
		rwg.Add(1)
		go func(ref *refresher) {
			defer rwg.Done()
			for {
				select {
				case <-made:
					ref.pass(ids) // the last pass: every lease is refreshed from here on
					return
				default:
				}
				// A pass every TTL/3 at most (what clientv3's KeepAlive does): the refresher must
				// not crowd out the grants it is racing.
				ps := time.Now()
				if !ref.pass(ids) {
					return
				}
				select {
				case <-made:
				case <-time.After(time.Until(ps.Add(time.Duration(ttlNs / 3)))):
				}
			}
		}(ref)
	}
	go func() {
		rwg.Wait()
		atomic.StoreInt64(&lastPassEnd, time.Now().UnixNano())
		close(refDone)
	}()
	// Poll the key count while the leases are made and expire.
	refreshedAll := false
	var releasedAt time.Time // the last refresh pass ended: from here on nothing keeps them alive
	polls, early := 0, 0
	earlyText := ""
	var lastSeen, firstLoss, allGone time.Time
	atRelease := int64(-1) // keys there at the first poll after the last keep-alive pass
	hardDeadline := time.Now().Add(time.Duration(ttl)*time.Second + 180*time.Second)
	for time.Now().Before(hardDeadline) {
		if !refreshedAll {
			select {
			case <-refDone:
				refreshedAll = true
				releasedAt = time.Unix(0, atomic.LoadInt64(&lastPassEnd))
				note("mass: %d leases and keys made in %s (%d grant errors, %d put errors); the last keep-alive pass ended %s after the start",
					n, since(t0), atomic.LoadInt64(&grantErrs), atomic.LoadInt64(&putErrs), releasedAt.Sub(t0).Round(time.Millisecond))
			default:
			}
		}
		ts := time.Now()
		ctx, cancel := ctxT(5 * time.Second)
		r, err := admin.Get(ctx, "mx/k/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
		te := time.Now()
		if err != nil {
			continue
		}
		polls++
		must, made := 0, 0
		for i := 0; i < n; i++ {
			// the put was acknowledged before this read began and the lease cannot have expired
			// before it ended (its grant or its newest answered keep-alive + TTL): it must be there
			a := atomic.LoadInt64(&putAck[i])
			if a == 0 || a >= ts.UnixNano() {
				continue
			}
			made++
			from := atomic.LoadInt64(&grantStart[i])
			if rf := atomic.LoadInt64(&refreshed[i]); rf > from {
				from = rf
			}
			if from+ttlNs > te.UnixNano() {
				must++
			}
		}
		if int(r.Count) < must {
			early++
			if earlyText == "" {
				earlyText = fmt.Sprintf("%d keys at %s, %d must still be there", r.Count, ts.Sub(t0), must)
			}
		}
		if refreshedAll && atRelease < 0 {
			atRelease = r.Count
		}
		if refreshedAll && firstLoss.IsZero() && int(r.Count) < made {
			firstLoss = te
		}
		if r.Count > 0 {
			lastSeen = ts
		} else if refreshedAll {
			allGone = te
			break
		}
		time.Sleep(20 * time.Millisecond) // the polling period
	}
	atomic.StoreInt32(&pstop, 1)
	<-pdone
	rcancel()
	var answered, mismatch int64
	for k, ref := range refs {
		<-rdones[k]
		answered += atomic.LoadInt64(&ref.answered)
		mismatch += atomic.LoadInt64(&ref.mismatch)
	}
	note("mass: the refreshers' keep-alives (%d streams): %d answered, %d answers out of order", shards, answered, mismatch)
	if mismatch > 0 {
		bad("mass: %d keep-alive answers did not match the request they follow (a stream answers in order)", mismatch)
	}
	// Revoking is paced at -revoke-rate, and each revoke also goes through Raft while the putter
	// and the keep-alives compete for the same two cores: etcd 3.4 (1,000/s nominal) revoked about
	// 770/s here. Half as much again, plus 2 s.
	bound := time.Duration(ttl)*time.Second + et + time.Duration(1500*n/(*flagRevokeRate))*time.Millisecond + *flagSlack
	if early == 0 {
		ok("mass: no key gone before its lease's TTL (%d polls)", polls)
	} else {
		bad("mass: keys gone before their TTL in %d of %d polls (first: %s)", early, polls, earlyText)
	}
	if allGone.IsZero() {
		bad("mass: keys still there %s after the last keep-alive pass", since(releasedAt))
	} else if lastSeen.Sub(releasedAt) > bound {
		bad("mass: a key still there %s after the last keep-alive pass (bound %s = TTL + election timeout + 1.5 x %d/%d s + %s)",
			lastSeen.Sub(releasedAt).Round(time.Millisecond), bound, n, *flagRevokeRate, *flagSlack)
	} else {
		loss := "-"
		if !firstLoss.IsZero() {
			loss = firstLoss.Sub(releasedAt).Round(time.Millisecond).String()
		}
		ok("mass: all %d keys gone %s after the last keep-alive pass (%d there when it ended, the first gone by %s; bound %s = TTL + election timeout + 1.5 x %d/%d s + %s)",
			n, allGone.Sub(releasedAt).Round(time.Millisecond), atRelease, loss, bound, n, *flagRevokeRate, *flagSlack)
	}
	// the putter's longest gap from the first grant until all were gone
	pmu.Lock()
	end := allGone
	if end.IsZero() {
		end = time.Now()
	}
	var gap time.Duration
	var gapFrom time.Time
	prev := t0
	cnt := 0
	for _, a := range acks {
		if a.Before(t0) {
			continue
		}
		if a.After(end) {
			break
		}
		if a.Sub(prev) > gap {
			gap, gapFrom = a.Sub(prev), prev
		}
		prev = a
		cnt++
	}
	if end.Sub(prev) > gap {
		gap, gapFrom = end.Sub(prev), prev
	}
	errs := append([]putErr(nil), perrs...)
	pmu.Unlock()
	if gap <= *flagMaxGap && cnt > 0 {
		ok("mass: the putter kept going: %d puts acknowledged, longest gap %s (bound %s)", cnt, gap.Round(time.Millisecond), *flagMaxGap)
	} else {
		bad("mass: the putter's longest gap %s (bound %s), %d puts", gap.Round(time.Millisecond), *flagMaxGap, cnt)
		explainGap(t0, gapFrom, gapFrom.Add(gap), errs)
	}
	// the leases themselves are gone
	ctx, cancel := ctxT(10 * time.Second)
	defer cancel()
	ls, err := admin.Leases(ctx)
	if err != nil {
		bad("mass: Leases: %v", err)
		return
	}
	mine := map[clientv3.LeaseID]bool{}
	for i := range ids {
		if ids[i] != 0 {
			mine[clientv3.LeaseID(ids[i])] = true
		}
	}
	left := 0
	for _, l := range ls.Leases {
		if mine[l.ID] {
			left++
		}
	}
	if left == 0 {
		ok("mass: none of the leases left in LeaseLeases (%d leases listed)", len(ls.Leases))
	} else {
		bad("mass: %d of the leases still listed by LeaseLeases", left)
	}
	wrong := 0
	for i := 0; i < n; i += (n + 19) / 20 {
		if ids[i] == 0 {
			continue
		}
		r, err := admin.TimeToLive(ctx, clientv3.LeaseID(ids[i]))
		if err != nil || r.TTL != -1 {
			wrong++
		}
	}
	if wrong == 0 {
		ok("mass: TimeToLive of a sample of them: TTL -1")
	} else {
		bad("mass: TimeToLive: %d of the sample not expired", wrong)
	}
}

// ---- (c) KeepAlive across kill -9 --------------------------------------------------------------

func scenarioKeepAlive(admin *clientv3.Client) {
	ttl := *flagKATTL
	et := time.Duration(*flagET) * time.Millisecond
	note("--- (c) a %d s lease kept alive by clientv3's KeepAlive across kill -9", ttl)
	cli := newClient(allEps())
	defer cli.Close()
	ctx, cancel := ctxT(10 * time.Second)
	g, err := cli.Grant(ctx, ttl)
	if err == nil {
		_, err = cli.Put(ctx, "ka/k", "v", clientv3.WithLease(g.ID))
	}
	cancel()
	if err != nil {
		bad("keepalive: grant and put: %v", err)
		return
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ch, err := cli.KeepAlive(kctx, g.ID)
	if err != nil {
		kcancel()
		bad("keepalive: KeepAlive: %v", err)
		return
	}
	var mu sync.Mutex
	var count int
	var lastMember uint64
	var badTTL int
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		for r := range ch {
			mu.Lock()
			count++
			lastMember = r.MemberId
			if r.TTL <= 0 {
				badTTL++
			}
			mu.Unlock()
		}
	}()
	answers := func() (int, uint64) { mu.Lock(); defer mu.Unlock(); return count, lastMember }
	if !waitFor(10*time.Second, func() bool { c, _ := answers(); return c > 0 }) {
		bad("keepalive: no answer")
	}
	for round := 0; round < 2; round++ {
		victim, what := -1, ""
		if round == 0 {
			_, mid := answers()
			victim, what = memberIndex(mid), "serving the keep-alive stream"
		} else {
			victim, what = waitLeader(admin, "keepalive"), "leader"
		}
		if victim < 0 {
			bad("keepalive: the keep-alive stream's member is unknown")
			continue
		}
		if l := leader(admin); l == victim && round == 0 {
			what += " (and leader)"
		}
		c0, _ := answers()
		kt := time.Now()
		kill9(victim)
		present, absent, errs := 0, 0, 0
		for time.Since(kt) < 3*time.Duration(ttl)*time.Second {
			ctx, cancel := ctxT(2 * time.Second)
			r, err := admin.Get(ctx, "ka/k")
			cancel()
			switch {
			case err != nil:
				errs++
			case len(r.Kvs) == 0:
				absent++
			default:
				present++
			}
			if absent > 0 {
				break
			}
			time.Sleep(20 * time.Millisecond) // the polling period
		}
		c1, m1 := answers()
		select {
		case <-closed:
			bad("keepalive: the library's KeepAlive channel closed: no keep-alive answered within the TTL (%d s) of the last one", ttl)
		default:
		}
		if absent == 0 && present > 10 {
			ok("keepalive: kill -9 of %s %s: ka/k there in every read for %d s (%d reads, %d without an answer)",
				what, members[victim].name, 3*ttl, present, errs)
		} else {
			bad("keepalive: kill -9 of %s %s: ka/k absent %s after the kill (%d present, %d errors)",
				what, members[victim].name, since(kt), present, errs)
		}
		if c1-c0 >= 3 && memberIndex(m1) != victim {
			ok("keepalive: %d keep-alives answered since, the latest by %s", c1-c0, memberName(m1))
		} else {
			bad("keepalive: %d keep-alives answered since the kill, the latest by %s", c1-c0, memberName(m1))
		}
		start(victim)
		if !waitUp(admin, victim) {
			bad("keepalive: %s did not come back", members[victim].name)
		}
	}
	kcancel()
	<-closed
	st := time.Now()
	bound := time.Duration(ttl)*time.Second + et + time.Second
	var seen time.Time
	gone := waitFor(bound+10*time.Second, func() bool {
		s := time.Now()
		ctx, cancel := ctxT(2 * time.Second)
		defer cancel()
		r, err := admin.Get(ctx, "ka/k")
		if err != nil {
			return false
		}
		if len(r.Kvs) > 0 {
			seen = s
			return false
		}
		return true
	})
	if gone && seen.Sub(st) <= bound {
		ok("keepalive: canceled: ka/k gone %s later (bound %s)", since(st), bound)
	} else {
		bad("keepalive: canceled: ka/k still there %s later (bound %s)", seen.Sub(st).Round(time.Millisecond), bound)
	}
	mu.Lock()
	if badTTL > 0 {
		bad("keepalive: %d answers with TTL <= 0 while the lease lived", badTTL)
	}
	mu.Unlock()
}

func memberName(id uint64) string {
	if i := memberIndex(id); i >= 0 {
		return members[i].name
	}
	return fmt.Sprintf("%x", id)
}

// ---- (d) bad input -----------------------------------------------------------------------------

func scenarioBadInput(admin *clientv3.Client, rng *rand.Rand) {
	note("--- (d) lease ids reused, an unknown id, a keep-alive stream that never reads")
	lc := pb.NewLeaseClient(admin.ActiveConnection())
	id := int64(0x1ea5e0000000 + rng.Intn(1<<20))
	ctx, cancel := ctxT(10 * time.Second)
	defer cancel()
	r, err := lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 30, ID: id})
	if err != nil || r.ID != id || r.TTL != 30 {
		bad("grant with ID %x: %v %v", id, r, err)
	} else {
		ok("grant with the chosen ID %x: granted, TTL 30", id)
	}
	_, err = lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 30, ID: id})
	if status.Code(err) == codes.FailedPrecondition && rpctypes.ErrorDesc(err) == "etcdserver: lease already exists" {
		ok("grant with an ID that exists: %s (%s)", rpctypes.ErrorDesc(err), status.Code(err))
	} else {
		bad("grant with an ID that exists: %v (want FailedPrecondition \"etcdserver: lease already exists\")", err)
	}
	if _, err = lc.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: id}); err != nil {
		bad("revoke %x: %v", id, err)
	}
	r, err = lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 30, ID: id})
	if err == nil && r.ID == id {
		ok("grant of a revoked lease's ID: granted again")
	} else {
		bad("grant of a revoked ID: %v %v", r, err)
	}
	// an unknown id on the keep-alive stream: TTL 0
	unknown := id + 1
	ks, err := lc.LeaseKeepAlive(ctx)
	if err == nil {
		err = ks.Send(&pb.LeaseKeepAliveRequest{ID: unknown})
	}
	var kr *pb.LeaseKeepAliveResponse
	if err == nil {
		kr, err = ks.Recv()
	}
	if err == nil && kr.ID == unknown && kr.TTL == 0 {
		ok("keep-alive of an unknown ID: answered with TTL 0")
	} else {
		bad("keep-alive of an unknown ID: %v %v", kr, err)
	}
	if err == nil {
		_ = ks.CloseSend()
	}
	// A stream that never reads: one client sends keep-alives for the lease as fast as it can;
	// others work meanwhile.
	greedy := newClient([]string{ep(waitLeader(admin, "greedy"))})
	defer greedy.Close()
	rss0 := [3]float64{rssMiB(0), rssMiB(1), rssMiB(2)}
	gctx, gcancel := context.WithCancel(context.Background())
	gs, err := pb.NewLeaseClient(greedy.ActiveConnection()).LeaseKeepAlive(gctx)
	if err != nil {
		gcancel()
		bad("greedy stream: %v", err)
		return
	}
	var sent int64
	gdone := make(chan error, 1)
	go func() {
		for atomic.LoadInt64(&sent) < 2000000 {
			if err := gs.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
				gdone <- err
				return
			}
			atomic.AddInt64(&sent, 1)
		}
		gdone <- nil
	}()
	other := newClient(allEps())
	defer other.Close()
	t0 := time.Now()
	var worst time.Duration
	ops, errs := 0, 0
	for time.Since(t0) < 5*time.Second {
		s := time.Now()
		c, cc := ctxT(5 * time.Second)
		_, err1 := other.Put(c, "gr/k", strconv.Itoa(ops))
		_, err2 := other.KeepAliveOnce(c, clientv3.LeaseID(id))
		cc()
		if d := time.Since(s); d > worst {
			worst = d
		}
		if err1 != nil || err2 != nil {
			errs++
		}
		ops++
	}
	rss1 := [3]float64{rssMiB(0), rssMiB(1), rssMiB(2)}
	if errs == 0 && worst <= *flagMaxGap {
		ok("greedy stream (%d keep-alives sent, none read): another client's put + keep-alive answered %d times, the slowest in %s",
			atomic.LoadInt64(&sent), ops, worst.Round(time.Millisecond))
	} else {
		bad("greedy stream: the other client got %d errors in %d rounds, the slowest %s (bound %s)", errs, ops, worst.Round(time.Millisecond), *flagMaxGap)
	}
	grew := 0.0
	for i := range rss0 {
		if d := rss1[i] - rss0[i]; d > grew {
			grew = d
		}
	}
	if grew < 256 {
		ok("greedy stream: members' resident memory grew by %.0f MiB at most (%v -> %v MiB)", grew, fmtMiB(rss0), fmtMiB(rss1))
	} else {
		bad("greedy stream: a member's resident memory grew by %.0f MiB (%v -> %v MiB)", grew, fmtMiB(rss0), fmtMiB(rss1))
	}
	gcancel()
	select {
	case <-gdone:
	case <-time.After(10 * time.Second):
		bad("greedy stream: its sender still blocked 10 s after the cancel")
	}
	c, cc := ctxT(5 * time.Second)
	ka, err := other.KeepAliveOnce(c, clientv3.LeaseID(id))
	cc()
	if err == nil && ka.TTL == 30 {
		ok("after the greedy stream: the lease's keep-alive answered, TTL 30")
	} else {
		bad("after the greedy stream: keep-alive %v %v", ka, err)
	}
}

func fmtMiB(v [3]float64) string {
	return fmt.Sprintf("%.0f/%.0f/%.0f", v[0], v[1], v[2])
}

// ---- main ---------------------------------------------------------------------------------------

func main() {
	runtime.LockOSThread() // Pdeathsig is per thread: the members die with this one
	flag.Parse()
	if *flagCerts == "" || *flagDir == "" || (*flagTarget == "craft" && *flagCraftd == "") ||
		(*flagTarget != "craft" && *flagTarget != "etcd") {
		fmt.Fprintln(os.Stderr, "usage: leasecheck -target craft|etcd [-craftd BIN] [-etcd BIN] -certs DIR -dir DIR")
		os.Exit(2)
	}
	seed := *flagSeed
	if seed == 0 {
		seed = time.Now().UnixNano() % 1000000
	}
	rng := rand.New(rand.NewSource(seed))
	note("leasecheck: target %s, seed %d (-seed %d replays the schedule), heartbeat %d ms, election timeout %d ms",
		*flagTarget, seed, seed, *flagHB, *flagET)
	budget := time.AfterFunc(*flagBudget, func() { die("the run took longer than %s", *flagBudget) })
	defer budget.Stop()
	for i := range members {
		members[i] = &member{name: fmt.Sprintf("n%d", i+1), cport: freePort(), pport: freePort()}
		members[i].log = filepath.Join(*flagDir, members[i].name+".log")
		cluster += fmt.Sprintf("%s%s=https://127.0.0.1:%d", map[bool]string{true: ",", false: ""}[i > 0], members[i].name, members[i].pport)
	}
	for i := range members {
		start(i)
	}
	admin := newClient(allEps())
	for i := range members {
		var id uint64
		if !waitFor(30*time.Second, func() bool {
			ctx, cancel := ctxT(time.Second)
			defer cancel()
			st, err := admin.Status(ctx, ep(i))
			if err != nil {
				return false
			}
			id = st.Header.MemberId
			return true
		}) {
			die("%s never answered Status", members[i].name)
		}
		members[i].id = id
	}
	l := waitLeader(admin, "start")
	ok("cluster up, leader %s", members[l].name)
	// Is the Lease API served at all?
	ctx, cancel := ctxT(10 * time.Second)
	g, err := admin.Grant(ctx, 10)
	cancel()
	if status.Code(err) == codes.Unimplemented || (err != nil && strings.Contains(err.Error(), "nimplemented")) {
		die("UNIMPLEMENTED: Lease API not served by %s: %v", *flagTarget, err)
	} else if err != nil {
		die("LeaseGrant: %v", err)
	}
	ok("LeaseGrant answered (TTL %d)", g.TTL)
	if strings.Contains(*flagOnly, "d") {
		scenarioBadInput(admin, rng)
	}
	if strings.Contains(*flagOnly, "c") {
		scenarioKeepAlive(admin)
	}
	if strings.Contains(*flagOnly, "b") {
		scenarioMassExpiry(admin)
	}
	if strings.Contains(*flagOnly, "a") {
		scenarioLock(admin, rng)
	}
	admin.Close()
	killAll()
	if failures() > 0 {
		for _, m := range members {
			fmt.Printf("--- %s.log (last 20 lines)\n%s\n", m.name, tail(m.log, 20))
		}
	}
	fmt.Printf("%d failure(s)\n", failures())
	if failures() > 0 {
		os.Exit(1)
	}
}
