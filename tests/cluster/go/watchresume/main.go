// Command watchresume checks craft's Watch with etcd's own Go client library (clientv3 from etcd
// 3.4, Debian's golang-etcd-server-dev) against a real 3-member craft cluster over mutual TLS: a
// watch whose member dies resumes on another member from its last revision with no gap and no
// duplicate (issue 15), and a watch resumed below a compaction is told so the way etcd's client
// reports it. tests/cluster/go_watch_resume_test.sh builds it (GOPATH mode, offline), makes the
// certificates and runs it; this program starts, kills (-9) and restarts the craftd processes
// itself, so it always knows which process is which member.
//
// The scenario (every wait is a bounded poll of a condition; nothing waits a fixed time):
//
//  1. Three members. A writer client (all three endpoints) puts gw/k0 .. gw/k4 in turn at a
//     steady pace (-pace), value "v<seq>" (each value is written once), one put at a time,
//     recording each put's revision, or, when the put failed, that its outcome is unknown (it
//     may have committed: a kill can cut the answer off).
//  2. Watcher A (its own client, all three endpoints) watches the prefix gw/ with prev_kv from
//     "now"; WithCreatedNotify tells the revision R it starts after. Once 30 puts are
//     acknowledged, watcher B (another client, the endpoints in reverse order) watches gw/ with
//     prev_kv from R+1 (WithRev): it catches up from history while the writes go on.
//  3. Rounds (-rounds, 6) of kill -9 then restart, one member at a time, while the writes go
//     on, in the order: the member serving A's stream, the leader, the member serving B's
//     stream, and again. Why this is deterministic: every watch response carries the header of
//     the member that sent it, and a client's watch stream stays on one member until that
//     stream breaks (the balancer picks a member only when a stream opens), so the member_id of
//     a watcher's newest response names the member its stream is on at the moment of the kill.
//     So rounds 1 and 4 must move A's stream and rounds 3 and 6 B's (checked: the next events
//     come from another member); rounds 2 and 5 are leader failovers under both watches (and
//     move a stream the leader serves). After each kill: writes are acknowledged again (after
//     an election if the leader died), the member is restarted and catches up, and both
//     watchers have seen the newest acknowledged write before the next member goes.
//  4. The writer stops and puts gw/end; both watchers must see it. The history of gw/ from R+1
//     to gw/end's revision is read back with one Range per revision (WithRev(r)). Checks: every
//     acknowledged put is in it at the revision its put reported, no value twice, nothing that
//     was not written, and each watcher's events equal it exactly: the same order, key, value,
//     mod and create revision, version and prev_kv (the key's previous version in that history).
//  5. Compacted resume: watcher C's client has one endpoint, a TCP proxy in this program in front
//     of a follower X. C watches gc/ and sees two puts; the proxy then cuts C off, X is killed
//     -9, two more puts are made and the cluster is compacted past C's next revision; X is
//     restarted and has applied the compaction before the proxy lets C in again (so the outcome
//     does not hang on a race between C's reconnection and X's catch-up). C's resumed watch must
//     end with CompactRevision set to the compaction and Err() == rpctypes.ErrCompacted, without
//     delivering a compacted event; watching again from CompactRevision (what etcd tells clients
//     to do) gets the rest. A new watch from a compacted revision on a connected client gets the
//     same answer.
//
// Output: "ok: ..." and "FAIL: ..." lines, then "N failure(s)"; exit status 1 on any failure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"craftport"
	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	"go.etcd.io/etcd/mvcc/mvccpb"
	"go.etcd.io/etcd/pkg/logutil"
	"go.etcd.io/etcd/pkg/transport"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

var (
	flagCraftd = flag.String("craftd", "", "the craftd binary")
	flagCerts  = flag.String("certs", "", "certificate directory (craft-certs): ca.pem, client.pem, n1.pem ...")
	flagDir    = flag.String("dir", "", "a scratch directory for the members' data and logs")
	flagPace   = flag.Duration("pace", 15*time.Millisecond, "the writer's interval between puts")
	flagRounds = flag.Int("rounds", 6, "kill -9 rounds: the member serving A, the leader, the member serving B, again ...")
	flagBudget = flag.Duration("budget", 150*time.Second, "fail if the whole run takes longer")
)

const nkeys = 5 // the writer cycles over gw/k0 .. gw/k4, so most puts have a prev_kv

var (
	outMu sync.Mutex // guards fails and keeps output lines whole
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

func failures() int {
	outMu.Lock()
	defer outMu.Unlock()
	return fails
}

// ---- members: craftd processes -------------------------------------------------------------

type member struct {
	name         string
	cport, pport int
	id           uint64
	log          string

	// Guarded by procMu: the current process, whether its exit is expected (we killed or
	// stopped it), how it exited, and a channel closed when it has.
	cmd     *exec.Cmd
	expect  bool
	exitErr error
	exited  chan struct{}
	running bool
}

var (
	members [3]*member
	procMu  sync.Mutex
	cluster string
)

func ep(i int) string { return fmt.Sprintf("https://127.0.0.1:%d", members[i].cport) }

func freePort() int {
	p, err := craftport.Free()
	if err != nil {
		die("no free port: %v", err)
	}
	return p
}

// start runs member i's craftd with its flags and data directory (a restart when it has run).
func start(i int) {
	m := members[i]
	c := *flagCerts
	args := []string{
		"--name", m.name, "--data-dir", filepath.Join(*flagDir, m.name),
		"--listen-client-urls", ep(i),
		"--listen-peer-urls", fmt.Sprintf("https://127.0.0.1:%d", m.pport),
		"--initial-cluster", cluster,
		"--heartbeat-interval", "50", "--election-timeout", "300", "--proposal-timeout", "2000",
		"--cert-file", filepath.Join(c, m.name+".pem"), "--key-file", filepath.Join(c, m.name+"-key.pem"),
		"--trusted-ca-file", filepath.Join(c, "ca.pem"),
		"--peer-cert-file", filepath.Join(c, m.name+".pem"), "--peer-key-file", filepath.Join(c, m.name+"-key.pem"),
		"--peer-trusted-ca-file", filepath.Join(c, "ca.pem"),
	}
	f, err := os.OpenFile(m.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		die("log %s: %v", m.log, err)
	}
	defer f.Close()
	fmt.Fprintf(f, "=== watchresume: start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(*flagCraftd, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Dies with this program (main locks its OS thread, which is the parent thread here).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		die("start %s: %v", m.name, err)
	}
	exited := make(chan struct{})
	procMu.Lock()
	m.cmd, m.expect, m.exitErr, m.exited, m.running = cmd, false, nil, exited, true
	procMu.Unlock()
	go func() {
		err := cmd.Wait()
		procMu.Lock()
		m.exitErr, m.running = err, false
		unexpected := !m.expect
		procMu.Unlock()
		if unexpected {
			bad("%s (pid %d) exited on its own: %v", m.name, cmd.Process.Pid, err)
		}
		close(exited)
	}()
}

// signal sends sig to member i (an expected exit) and waits up to timeout for it to exit; it
// returns the exit error (nil: status 0) or an error saying it did not exit.
func signal(i int, sig syscall.Signal, timeout time.Duration) error {
	m := members[i]
	procMu.Lock()
	if !m.running {
		procMu.Unlock()
		return nil
	}
	m.expect = true
	cmd, exited := m.cmd, m.exited
	procMu.Unlock()
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("still running %v after %v", sig, timeout)
	}
	procMu.Lock()
	defer procMu.Unlock()
	return m.exitErr
}

func kill9(i int) { _ = signal(i, syscall.SIGKILL, 10*time.Second) }

func killAll() {
	for i := range members {
		if members[i] != nil {
			kill9(i)
		}
	}
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

func dumpLogs() {
	for _, m := range members {
		if m != nil {
			fmt.Printf("--- %s.log (last 25 lines)\n%s\n", m.name, tail(m.log, 25))
		}
	}
}

// die ends the run at once: members killed, logs shown.
func die(format string, a ...interface{}) {
	bad(format, a...)
	killAll()
	dumpLogs()
	fmt.Printf("%d failure(s)\n", failures())
	os.Exit(1)
}

// ---- clients ----------------------------------------------------------------------------------

func newClient(eps []string, opts ...grpc.DialOption) *clientv3.Client {
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
	lc.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: eps, TLS: tc, DialTimeout: 5 * time.Second, LogConfig: &lc, DialOptions: opts,
	})
	if err != nil {
		die("client %v: %v", eps, err)
	}
	return cli
}

// Polls cond every 10 ms until it holds (true) or timeout passes (false).
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

// status asks member i directly (a fresh connection each time, so a restarted member answers
// as soon as it listens).
func status(cli *clientv3.Client, i int) (*clientv3.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return cli.Status(ctx, ep(i))
}

func running(i int) bool {
	procMu.Lock()
	defer procMu.Unlock()
	return members[i].running
}

// leader: the index of the member every running member that answers names as leader (at least
// two answering), or -1.
func leader(cli *clientv3.Client) int {
	votes, answers := map[uint64]int{}, 0
	for i := range members {
		if !running(i) {
			continue
		}
		st, err := status(cli, i)
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

func memberName(id uint64) string {
	for _, m := range members {
		if m.id == id {
			return m.name
		}
	}
	return fmt.Sprintf("%x", id)
}

func memberIndex(id uint64) int {
	for i, m := range members {
		if m.id == id {
			return i
		}
	}
	return -1
}

// ---- the writer ---------------------------------------------------------------------------

type put struct {
	seq   int
	key   string
	val   string
	rev   int64 // 0: the put failed, its outcome is unknown
	err   string
	acked bool
}

type writer struct {
	cli  *clientv3.Client
	mu   sync.Mutex
	puts []put
	stop chan struct{}
	done chan struct{}
}

func (w *writer) run() {
	defer close(w.done)
	tick := time.NewTicker(*flagPace)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
		p := put{seq: seq, key: fmt.Sprintf("gw/k%d", seq%nkeys), val: fmt.Sprintf("v%05d", seq)}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		resp, err := w.cli.Put(ctx, p.key, p.val)
		cancel()
		if err == nil {
			p.rev, p.acked = resp.Header.Revision, true
		} else {
			p.err = err.Error()
		}
		w.mu.Lock()
		w.puts = append(w.puts, p)
		w.mu.Unlock()
	}
}

// acked: how many puts were acknowledged, and the newest one's revision.
func (w *writer) acked() (int, int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, rev := 0, int64(0)
	for _, p := range w.puts {
		if p.acked {
			n++
			rev = p.rev
		}
	}
	return n, rev
}

// ---- watchers -----------------------------------------------------------------------------

// segment: consecutive responses of one watcher sent by one member.
type segment struct {
	member            uint64
	firstRev, lastRev int64
	events            int
}

type watcher struct {
	name       string
	mu         sync.Mutex
	events     []*clientv3.Event
	segs       []segment
	created    bool  // the created response arrived (WithCreatedNotify)
	createdRev int64 // its header revision: the watch's events start after it
	errs       []string
	resps      []clientv3.WatchResponse // responses that ended or canceled the watch
	closed     bool
}

func (w *watcher) run(ch clientv3.WatchChan) {
	for wr := range ch {
		w.mu.Lock()
		if err := wr.Err(); err != nil || wr.Canceled {
			w.errs = append(w.errs, fmt.Sprintf("%v (compact_revision %d, canceled %v)", err, wr.CompactRevision, wr.Canceled))
			w.resps = append(w.resps, wr)
		}
		if wr.Created {
			w.created, w.createdRev = true, wr.Header.Revision
		}
		if len(wr.Events) > 0 {
			first, last := wr.Events[0].Kv.ModRevision, wr.Events[len(wr.Events)-1].Kv.ModRevision
			if n := len(w.segs); n > 0 && w.segs[n-1].member == wr.Header.MemberId {
				w.segs[n-1].lastRev = last
				w.segs[n-1].events += len(wr.Events)
			} else {
				w.segs = append(w.segs, segment{wr.Header.MemberId, first, last, len(wr.Events)})
			}
			w.events = append(w.events, wr.Events...)
		}
		w.mu.Unlock()
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// lastRev: the newest event's revision, 0 if none.
func (w *watcher) lastRev() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.events) == 0 {
		return 0
	}
	return w.events[len(w.events)-1].Kv.ModRevision
}

// serving: the member that sent the newest events, and how many segments there are.
func (w *watcher) serving() (uint64, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.segs) == 0 {
		return 0, 0
	}
	return w.segs[len(w.segs)-1].member, len(w.segs)
}

func (w *watcher) segAt(k int) (segment, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if k < len(w.segs) {
		return w.segs[k], true
	}
	return segment{}, false
}

func (w *watcher) path() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var parts []string
	for _, s := range w.segs {
		parts = append(parts, fmt.Sprintf("%s[%d..%d, %d events]", memberName(s.member), s.firstRev, s.lastRev, s.events))
	}
	return strings.Join(parts, " -> ")
}

func (w *watcher) hasErrs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.errs...)
}

// ---- a TCP proxy that can cut its clients off -----------------------------------------------

type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	open   bool
	conns  map[net.Conn]struct{}
}

func newProxy(target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		die("proxy: %v", err)
	}
	p := &proxy{ln: ln, target: target, open: true, conns: map[net.Conn]struct{}{}}
	go p.serve()
	return p
}

func (p *proxy) addr() string { return "https://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if !p.open {
			p.mu.Unlock()
			c.Close() // cut off: the client sees its connection refused at the handshake
			continue
		}
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		go p.pipe(c)
	}
}

func (p *proxy) pipe(c net.Conn) {
	u, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		p.drop(c)
		return
	}
	p.mu.Lock()
	if !p.open {
		p.mu.Unlock()
		p.drop(c, u)
		return
	}
	p.conns[u] = struct{}{}
	p.mu.Unlock()
	go func() { _, _ = io.Copy(u, c); p.drop(c, u) }()
	_, _ = io.Copy(c, u)
	p.drop(c, u)
}

func (p *proxy) drop(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		c.Close()
		delete(p.conns, c)
	}
}

// setOpen(false) closes every connection through the proxy and refuses new ones.
func (p *proxy) setOpen(open bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = open
	if !open {
		for c := range p.conns {
			c.Close()
		}
		p.conns = map[net.Conn]struct{}{}
	}
}

// ---- the history, read back with Range --------------------------------------------------------

type histEvent struct {
	kv   *mvccpb.KeyValue
	prev *mvccpb.KeyValue // the key's previous version, nil for a creation
}

// history reads the events of prefix in (from, to] with one Range per revision: the key whose
// mod_revision is r was written at r; its previous version is what the Range at r-1 returned.
func history(cli *clientv3.Client, prefix string, from, to int64) ([]histEvent, error) {
	n := int(to - from + 1) // revisions from .. to
	states := make([][]*mvccpb.KeyValue, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				if from+int64(k) <= 0 {
					continue // before the first write: empty (WithRev(0) would mean "now")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from+int64(k)))
				cancel()
				if err != nil {
					errs[k] = err
				} else {
					states[k] = resp.Kvs
				}
			}
		}()
	}
	for k := 0; k < n; k++ {
		next <- k
	}
	close(next)
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("range %s at revision %d: %v", prefix, from+int64(k), err)
		}
	}
	var out []histEvent
	for k := 1; k < n; k++ {
		r := from + int64(k)
		prevState := map[string]*mvccpb.KeyValue{}
		for _, kv := range states[k-1] {
			prevState[string(kv.Key)] = kv
		}
		var at []*mvccpb.KeyValue
		for _, kv := range states[k] {
			if kv.ModRevision == r {
				at = append(at, kv)
			}
		}
		if len(at) > 1 {
			return nil, fmt.Errorf("revision %d wrote %d keys of %s; the writer's puts are single", r, len(at), prefix)
		}
		if len(states[k]) < len(states[k-1]) {
			return nil, fmt.Errorf("revision %d deleted a key of %s; nothing deletes", r, prefix)
		}
		if len(at) == 1 {
			out = append(out, histEvent{at[0], prevState[string(at[0].Key)]})
		}
	}
	return out, nil
}

func kvString(kv *mvccpb.KeyValue) string {
	if kv == nil {
		return "none"
	}
	return fmt.Sprintf("%s=%s@%d(create %d, version %d)", kv.Key, kv.Value, kv.ModRevision, kv.CreateRevision, kv.Version)
}

func evString(e *clientv3.Event) string {
	s := fmt.Sprintf("%s %s", e.Type, kvString(e.Kv))
	if e.PrevKv != nil {
		s += " prev " + kvString(e.PrevKv)
	}
	return s
}

func histString(h histEvent) string {
	s := "PUT " + kvString(h.kv)
	if h.prev != nil {
		s += " prev " + kvString(h.prev)
	}
	return s
}

func sameKV(a, b *mvccpb.KeyValue) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return string(a.Key) == string(b.Key) && string(a.Value) == string(b.Value) &&
		a.ModRevision == b.ModRevision && a.CreateRevision == b.CreateRevision && a.Version == b.Version
}

// compareWatcher: w's events (up to and including revision end) must be exactly hist.
func compareWatcher(w *watcher, hist []histEvent, end int64) []*clientv3.Event {
	w.mu.Lock()
	var evs []*clientv3.Event
	for _, e := range w.events {
		if e.Kv.ModRevision <= end {
			evs = append(evs, e)
		}
	}
	w.mu.Unlock()
	probs := diffEvents(evs, hist)
	for _, p := range probs {
		bad("watcher %s: %s", w.name, p)
	}
	if len(probs) == 0 {
		ok("watcher %s: %d events = the history exactly (order, values, revisions, prev_kv), no gap, no duplicate", w.name, len(evs))
	}
	return evs
}

// diffEvents: how evs differs from hist, one line per kind of difference; nil when equal.
func diffEvents(evs []*clientv3.Event, hist []histEvent) []string {
	var probs []string
	// Strictly increasing revisions; duplicates, gaps and extras by revision.
	seen := map[int64]int{}
	var last int64
	var order []string
	for _, e := range evs {
		r := e.Kv.ModRevision
		if r <= last && len(order) < 5 {
			order = append(order, fmt.Sprintf("%d after %d", r, last))
		}
		last = r
		seen[r]++
	}
	var dups, gaps []int64
	for r, c := range seen {
		if c > 1 {
			dups = append(dups, r)
		}
	}
	want := map[int64]bool{}
	for _, h := range hist {
		want[h.kv.ModRevision] = true
		if seen[h.kv.ModRevision] == 0 {
			gaps = append(gaps, h.kv.ModRevision)
		}
	}
	var extra []int64
	for r := range seen {
		if !want[r] {
			extra = append(extra, r)
		}
	}
	for _, s := range [][]int64{dups, gaps, extra} {
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	}
	if len(order) > 0 {
		probs = append(probs, "revisions not strictly increasing: "+strings.Join(order, ", "))
	}
	if len(dups) > 0 {
		probs = append(probs, fmt.Sprintf("%d revision(s) delivered more than once (duplicates): %v", len(dups), head(dups)))
	}
	if len(gaps) > 0 {
		probs = append(probs, fmt.Sprintf("%d revision(s) of the history never delivered (gap): %v", len(gaps), head(gaps)))
	}
	if len(extra) > 0 {
		probs = append(probs, fmt.Sprintf("%d revision(s) delivered that the history does not have: %v", len(extra), head(extra)))
	}
	// Element by element: the first difference, after the last event that matched.
	for k := 0; k < len(evs) || k < len(hist); k++ {
		got, exp := "(nothing)", "(nothing)"
		if k < len(evs) {
			got = evString(evs[k])
		}
		if k < len(hist) {
			exp = histString(hist[k])
		}
		match := k < len(evs) && k < len(hist) && evs[k].Type == mvccpb.PUT &&
			sameKV(evs[k].Kv, hist[k].kv) && sameKV(evs[k].PrevKv, hist[k].prev)
		if !match {
			after := "at the start"
			if k > 0 {
				after = "after " + evString(evs[k-1])
			}
			probs = append(probs, fmt.Sprintf("event %d of %d (the history has %d), %s: got %s, want %s",
				k, len(evs), len(hist), after, got, exp))
			break
		}
	}
	return probs
}

// selfCheck: a comparison that never fails would prove nothing, so evs (a watcher's events,
// equal to hist) is altered in each way a broken resume could alter it, and the comparison must
// report each one.
func selfCheck(evs []*clientv3.Event, hist []histEvent) {
	k := len(evs) / 2
	j := -1 // an event with a prev_kv
	for i := k; i < len(evs); i++ {
		if evs[i].PrevKv != nil {
			j = i
			break
		}
	}
	if len(evs) < 10 || j < 0 {
		bad("self-check: too few events (%d) to alter", len(evs))
		return
	}
	clone := func() []*clientv3.Event { return append([]*clientv3.Event(nil), evs...) }
	alter := func(i int, f func(e *clientv3.Event)) []*clientv3.Event {
		c := clone()
		e := *c[i]
		kv, prev := *e.Kv, *e.PrevKv
		e.Kv, e.PrevKv = &kv, &prev
		f(&e)
		c[i] = &e
		return c
	}
	swapped := clone()
	swapped[k], swapped[k+1] = swapped[k+1], swapped[k]
	cases := []struct {
		what, word string
		evs        []*clientv3.Event
	}{
		{"an event left out", "(gap)", append(clone()[:k], evs[k+1:]...)},
		{"an event delivered twice", "(duplicates)", append(clone()[:k+1], evs[k:]...)},
		{"two events swapped", "not strictly increasing", swapped},
		{"a wrong value", "got ", alter(j, func(e *clientv3.Event) { e.Kv.Value = []byte("x") })},
		{"a wrong prev_kv", "got ", alter(j, func(e *clientv3.Event) { e.PrevKv.ModRevision-- })},
		{"a missing prev_kv", "got ", alter(j, func(e *clientv3.Event) { e.PrevKv = nil })},
	}
	var what []string
	for _, c := range cases {
		probs := diffEvents(c.evs, hist)
		if !strings.Contains(strings.Join(probs, "\n"), c.word) {
			bad("self-check: the comparison missed %s (it said %q)", c.what, probs)
		}
		what = append(what, c.what)
	}
	ok("self-check: the comparison reports %s", strings.Join(what, ", "))
}

func head(s []int64) []int64 {
	if len(s) > 10 {
		return s[:10]
	}
	return s
}

// ---- main --------------------------------------------------------------------------------

func main() {
	flag.Parse()
	if *flagCraftd == "" || *flagCerts == "" || *flagDir == "" {
		fmt.Fprintln(os.Stderr, "usage: watchresume -craftd PATH -certs DIR -dir DIR")
		os.Exit(2)
	}
	// The members are started from this goroutine only; with it locked to one OS thread, the
	// parent thread Pdeathsig watches lives as long as the program.
	runtime.LockOSThread()
	t0 := time.Now()
	time.AfterFunc(*flagBudget, func() { die("run budget of %v exceeded", *flagBudget) })

	var peers []string
	for i := range members {
		name := fmt.Sprintf("n%d", i+1)
		members[i] = &member{name: name, cport: freePort(), pport: freePort(), log: filepath.Join(*flagDir, name+".log")}
		peers = append(peers, fmt.Sprintf("%s=https://127.0.0.1:%d", name, members[i].pport))
	}
	cluster = strings.Join(peers, ",")
	for i := range members {
		start(i)
	}
	all := []string{ep(0), ep(1), ep(2)}
	cliW := newClient(all)
	defer cliW.Close()
	if !waitFor(30*time.Second, func() bool {
		for i := range members {
			st, err := status(cliW, i)
			if err != nil {
				return false
			}
			members[i].id = st.Header.MemberId
		}
		return true
	}) {
		die("the members did not all answer Status within 30 s")
	}
	l := -1
	waitFor(30*time.Second, func() bool { l = leader(cliW); return l >= 0 })
	if l < 0 {
		die("no leader within 30 s")
	}
	ok("cluster up: leader %s (%.1f s)", members[l].name, time.Since(t0).Seconds())

	// ---- watcher A from now, then the writer, then watcher B from A's start ------------------
	cliA := newClient(all)
	defer cliA.Close()
	cliB := newClient([]string{ep(2), ep(1), ep(0)})
	defer cliB.Close()
	ctx, cancelAll := context.WithCancel(context.Background())
	defer cancelAll()
	// One write outside gw/ first, so that the cluster's history does not start with the
	// writer's puts (R itself is the serving member's revision, which may still be 0 there).
	{
		pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := cliW.Put(pctx, "gw-before", "x")
		pcancel()
		if err != nil {
			die("put gw-before: %v", err)
		}
	}
	wA := &watcher{name: "A"}
	go wA.run(cliA.Watch(ctx, "gw/", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify()))
	var startRev int64
	if !waitFor(20*time.Second, func() bool {
		wA.mu.Lock()
		defer wA.mu.Unlock()
		startRev = wA.createdRev
		return wA.created
	}) {
		die("watcher A: no created response within 20 s (%v)", wA.hasErrs())
	}
	ok("watcher A created: events after revision %d", startRev)

	wr := &writer{cli: cliW, stop: make(chan struct{}), done: make(chan struct{})}
	go wr.run()
	if !waitFor(20*time.Second, func() bool { n, _ := wr.acked(); return n >= 30 }) {
		die("the writer did not get 30 puts acknowledged within 20 s")
	}
	wB := &watcher{name: "B"}
	go wB.run(cliB.Watch(ctx, "gw/", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(startRev+1)))
	_, target := wr.acked()
	if !waitFor(30*time.Second, func() bool { return wA.lastRev() >= target && wB.lastRev() >= target }) {
		die("watchers did not reach revision %d within 30 s (A at %d, B at %d)", target, wA.lastRev(), wB.lastRev())
	}
	sa, _ := wA.serving()
	sb, _ := wB.serving()
	ok("watcher B started at revision %d and caught up; A on %s, B on %s", startRev+1, memberName(sa), memberName(sb))

	// ---- three rounds of kill -9 and restart ---------------------------------------------
	moved := map[string]int{}
	leaderKills := 0
	for round := 1; round <= *flagRounds; round++ {
		var victim int
		var why string
		switch (round-1)%3 + 1 {
		case 1:
			id, _ := wA.serving()
			victim, why = memberIndex(id), "serving watcher A"
		case 2:
			victim = -1
			waitFor(20*time.Second, func() bool { victim = leader(cliW); return victim >= 0 })
			if victim < 0 {
				die("round %d: no leader within 20 s", round)
			}
			why = "the leader"
		case 3:
			id, _ := wB.serving()
			victim, why = memberIndex(id), "serving watcher B"
		}
		if victim < 0 {
			die("round %d: cannot tell which member to kill", round)
		}
		wasLeader := leader(cliW) == victim
		if wasLeader {
			leaderKills++
		}
		// Which watchers the victim serves, and how many segments each had, at the kill.
		type at struct {
			w      *watcher
			served bool
			nseg   int
		}
		var ats []at
		for _, w := range []*watcher{wA, wB} {
			id, n := w.serving()
			ats = append(ats, at{w, id == members[victim].id, n})
		}
		n0, _ := wr.acked()
		tk := time.Now()
		kill9(victim)
		if !waitFor(20*time.Second, func() bool { n, _ := wr.acked(); return n >= n0+10 }) {
			die("round %d: writes not acknowledged again within 20 s of killing %s", round, members[victim].name)
		}
		resumeW := time.Since(tk)
		start(victim)
		_, target := wr.acked()
		if !waitFor(45*time.Second, func() bool {
			st, err := status(cliW, victim)
			return err == nil && st.Header.Revision >= target
		}) {
			die("round %d: %s did not come back and reach revision %d within 45 s", round, members[victim].name, target)
		}
		_, target = wr.acked()
		if !waitFor(30*time.Second, func() bool { return wA.lastRev() >= target && wB.lastRev() >= target }) {
			die("round %d: watchers did not reach revision %d within 30 s of %s's restart (A at %d, B at %d)",
				round, target, members[victim].name, wA.lastRev(), wB.lastRev())
		}
		var notes []string
		for _, a := range ats {
			if !a.served {
				continue
			}
			s, ok2 := a.w.segAt(a.nseg)
			if !ok2 || s.member == members[victim].id {
				bad("round %d: watcher %s was on %s when it was killed, but its next events came from %s",
					round, a.w.name, members[victim].name, map[bool]string{true: memberName(s.member), false: "nowhere"}[ok2])
				continue
			}
			moved[a.w.name]++
			notes = append(notes, fmt.Sprintf("watcher %s moved %s -> %s", a.w.name, members[victim].name, memberName(s.member)))
		}
		if len(notes) == 0 {
			notes = append(notes, "no watcher was on it")
		}
		ok("round %d: killed %s (%s%s); writes acknowledged again after %.2f s; restarted, caught up; %s (%.1f s)",
			round, members[victim].name, why, map[bool]string{true: ", was leader", false: ""}[wasLeader && why != "the leader"],
			resumeW.Seconds(), strings.Join(notes, "; "), time.Since(tk).Seconds())
	}
	if moved["A"] < 1 || moved["B"] < 1 {
		bad("a watch stream did not move: A moved %d time(s), B %d", moved["A"], moved["B"])
	}
	if leaderKills < 1 {
		bad("no kill hit the leader")
	}

	// ---- stop writing, mark the end, compare with the history ----------------------------------
	close(wr.stop)
	<-wr.done
	ectx, ecancel := context.WithTimeout(context.Background(), 10*time.Second)
	eresp, err := cliW.Put(ectx, "gw/end", "end")
	ecancel()
	if err != nil {
		die("put gw/end: %v", err)
	}
	endRev := eresp.Header.Revision
	if !waitFor(20*time.Second, func() bool { return wA.lastRev() >= endRev && wB.lastRev() >= endRev }) {
		bad("watchers did not see gw/end (revision %d) within 20 s (A at %d, B at %d)", endRev, wA.lastRev(), wB.lastRev())
	}
	th := time.Now()
	hist, err := history(cliW, "gw/", startRev, endRev)
	if err != nil {
		die("history: %v", err)
	}
	if len(hist) == 0 || string(hist[len(hist)-1].kv.Key) != "gw/end" {
		die("history: does not end with gw/end at revision %d", endRev)
	}
	ok("history of gw/ in (%d, %d]: %d events, read with %d Ranges in %.2f s", startRev, endRev, len(hist), endRev-startRev+1, time.Since(th).Seconds())

	// The writer's puts against the history.
	wr.mu.Lock()
	puts := append([]put(nil), wr.puts...)
	wr.mu.Unlock()
	byVal := map[string]put{}
	nacked, nunknown := 0, 0
	var lastAcked int64
	for _, p := range puts {
		byVal[p.val] = p
		if p.acked {
			nacked++
			if p.rev <= lastAcked {
				bad("put %d (%s) acknowledged at revision %d, not after the previous acknowledged put's %d", p.seq, p.val, p.rev, lastAcked)
			}
			lastAcked = p.rev
		} else {
			nunknown++
		}
	}
	inHist := map[string]int64{}
	dupVals := 0
	for _, h := range hist[:len(hist)-1] { // all but gw/end
		v := string(h.kv.Value)
		if r, dup := inHist[v]; dup {
			if dupVals < 5 {
				bad("history: value %s written twice, at revisions %d and %d (a put applied twice)", v, r, h.kv.ModRevision)
			}
			dupVals++
		}
		inHist[v] = h.kv.ModRevision
		p, known := byVal[v]
		if !known || p.key != string(h.kv.Key) {
			bad("history: %s at revision %d was never put by the writer", kvString(h.kv), h.kv.ModRevision)
		}
	}
	missing, misplaced, unknownIn := 0, 0, 0
	for _, p := range puts {
		r, in := inHist[p.val]
		switch {
		case p.acked && !in:
			if missing < 5 {
				bad("acknowledged put %d %s=%s (revision %d) is not in the history", p.seq, p.key, p.val, p.rev)
			}
			missing++
		case p.acked && r != p.rev:
			if misplaced < 5 {
				bad("acknowledged put %d %s=%s: its answer said revision %d, the history has it at %d", p.seq, p.key, p.val, p.rev, r)
			}
			misplaced++
		case !p.acked && in:
			unknownIn++
		}
	}
	if missing == 0 && misplaced == 0 && dupVals == 0 {
		kinds := map[string]int{}
		for _, p := range puts {
			if !p.acked {
				kinds[p.err]++
			}
		}
		var ks []string
		for k, c := range kinds {
			ks = append(ks, fmt.Sprintf("%dx %q", c, k))
		}
		sort.Strings(ks)
		ok("writer: %d puts acknowledged, all in the history at their revisions; %d failed (outcome unknown: %s), %d of those committed",
			nacked, nunknown, strings.Join(ks, ", "), unknownIn)
	}
	for _, w := range []*watcher{wA, wB} {
		if errs := w.hasErrs(); len(errs) > 0 {
			bad("watcher %s: the client reported %v", w.name, errs)
		}
		evs := compareWatcher(w, hist, endRev)
		ok("watcher %s's stream: %s", w.name, w.path())
		if w == wA {
			selfCheck(evs, hist)
		}
	}

	// ---- compacted resume ------------------------------------------------------------------
	compactedResume(cliW)

	// ---- shutdown: every member must stop cleanly -------------------------------------------
	cancelAll()
	cliA.Close()
	cliB.Close()
	for i := range members {
		if err := signal(i, syscall.SIGTERM, 30*time.Second); err != nil {
			bad("%s did not stop cleanly on SIGTERM: %v", members[i].name, err)
		}
	}
	for _, m := range members {
		b, _ := os.ReadFile(m.log)
		if strings.Contains(string(b), "AddressSanitizer") || strings.Contains(string(b), "runtime error:") {
			bad("%s's log has a sanitizer report", m.name)
		}
	}
	n := failures()
	if n > 0 {
		dumpLogs()
	}
	fmt.Printf("run time %.1f s\n%d failure(s)\n", time.Since(t0).Seconds(), n)
	if n > 0 {
		os.Exit(1)
	}
}

// compactedResume is step 5 (see the top of the file).
func compactedResume(cliW *clientv3.Client) {
	x := -1
	waitFor(20*time.Second, func() bool {
		l := leader(cliW)
		if l >= 0 {
			x = (l + 1) % 3
		}
		return l >= 0
	})
	if x < 0 {
		die("compacted resume: no leader")
	}
	px := newProxy(fmt.Sprintf("127.0.0.1:%d", members[x].cport))
	// Quick reconnection once the proxy lets the client in again (gRPC's default backoff grows
	// to seconds); the library's own resume logic is unchanged.
	cliC := newClient([]string{px.addr()}, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 300 * time.Millisecond},
		MinConnectTimeout: 5 * time.Second,
	}))
	defer cliC.Close()
	// Puts retried until acknowledged: right after a kill the writer's client may still send on
	// the dead member's connection. A retried put that had committed only adds a revision
	// below the compaction, which changes nothing here.
	putRev := func(k, v string) int64 {
		var rev int64
		var err error
		waitFor(15*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var r *clientv3.PutResponse
			if r, err = cliW.Put(ctx, k, v); err == nil {
				rev = r.Header.Revision
			}
			return err == nil
		})
		if err != nil {
			die("compacted resume: put %s: %v", k, err)
		}
		return rev
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wC := &watcher{name: "C"}
	go wC.run(cliC.Watch(ctx, "gc/", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify()))
	if !waitFor(20*time.Second, func() bool { wC.mu.Lock(); defer wC.mu.Unlock(); return wC.created }) {
		die("watcher C: no created response (%v)", wC.hasErrs())
	}
	r1 := putRev("gc/a", "1")
	r2 := putRev("gc/a", "2")
	if !waitFor(20*time.Second, func() bool { return wC.lastRev() >= r2 }) {
		die("watcher C did not see gc/a=2 at %d", r2)
	}
	px.setOpen(false)
	kill9(x)
	r3 := putRev("gc/a", "3")
	r4 := putRev("gc/a", "4")
	var err error
	waitFor(15*time.Second, func() bool {
		cctx, ccancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer ccancel()
		_, err = cliW.Compact(cctx, r4)
		if errors.Is(err, rpctypes.ErrCompacted) {
			err = nil // an earlier try was applied after all
		}
		return err == nil
	})
	if err != nil {
		die("compact %d: %v", r4, err)
	}
	rm := putRev("gc/marker", "m") // after the compaction in the log
	start(x)
	if !waitFor(45*time.Second, func() bool {
		st, err := status(cliW, x)
		return err == nil && st.Header.Revision >= rm
	}) {
		die("compacted resume: %s did not come back past revision %d", members[x].name, rm)
	}
	ok("compacted resume: C saw revisions %d, %d on %s; cut off, %s killed, puts at %d, %d, compacted at %d, %s back past it",
		r1, r2, members[x].name, members[x].name, r3, r4, r4, members[x].name)
	px.setOpen(true)
	if !waitFor(30*time.Second, func() bool { wC.mu.Lock(); defer wC.mu.Unlock(); return wC.closed }) {
		bad("compacted resume: C's watch channel still open 30 s after reconnecting (errors %v, last revision %d)", wC.hasErrs(), wC.lastRev())
	} else {
		wC.mu.Lock()
		var evs []string
		for _, e := range wC.events {
			evs = append(evs, evString(e))
		}
		resps := append([]clientv3.WatchResponse(nil), wC.resps...)
		wC.mu.Unlock()
		switch {
		case len(evs) != 2 || wC.lastRev() != r2:
			bad("compacted resume: C got events %v, want only gc/a=1 at %d and gc/a=2 at %d", evs, r1, r2)
		case len(resps) != 1:
			bad("compacted resume: C's closing responses %v, want exactly one (compacted)", wC.hasErrs())
		case !errors.Is(resps[0].Err(), rpctypes.ErrCompacted) || resps[0].CompactRevision != r4 || !resps[0].Canceled:
			bad("compacted resume: C ended with Err() %v, CompactRevision %d, Canceled %v; want %v, %d, true",
				resps[0].Err(), resps[0].CompactRevision, resps[0].Canceled, rpctypes.ErrCompacted, r4)
		case memberIndex(resps[0].Header.MemberId) != x:
			bad("compacted resume: the compacted response came from %s, not %s", memberName(resps[0].Header.MemberId), members[x].name)
		default:
			ok("compacted resume: C's resumed watch ended with Err() = %q, CompactRevision %d (from %s), no compacted event delivered",
				resps[0].Err(), resps[0].CompactRevision, members[x].name)
		}
	}
	// What etcd's documentation tells a client to do next: watch again from CompactRevision.
	wC2 := &watcher{name: "C2"}
	go wC2.run(cliC.Watch(ctx, "gc/a", clientv3.WithPrevKV(), clientv3.WithRev(r4)))
	if !waitFor(20*time.Second, func() bool { return wC2.lastRev() >= r4 }) {
		bad("compacted resume: watching again from %d got nothing (%v)", r4, wC2.hasErrs())
	} else {
		wC2.mu.Lock()
		e := wC2.events[0]
		wC2.mu.Unlock()
		if string(e.Kv.Value) != "4" || e.Kv.ModRevision != r4 || e.PrevKv != nil {
			// gc/a=3 (r3) is below the compaction: etcd leaves prev_kv out when that version is gone.
			bad("compacted resume: watching again from %d: first event %s, want gc/a=4@%d without prev_kv", r4, evString(e), r4)
		} else {
			ok("compacted resume: watching again from CompactRevision %d gets gc/a=4 (the compacted previous version left out)", r4)
		}
	}
	// A new watch below the compaction on a client that never lost its connection.
	wD := &watcher{name: "D"}
	go wD.run(cliW.Watch(ctx, "gc/a", clientv3.WithRev(r3)))
	if !waitFor(20*time.Second, func() bool { wD.mu.Lock(); defer wD.mu.Unlock(); return wD.closed }) {
		bad("a watch from compacted revision %d: channel still open after 20 s", r3)
	} else {
		wD.mu.Lock()
		resps, nev := wD.resps, len(wD.events)
		wD.mu.Unlock()
		if len(resps) != 1 || nev != 0 || !errors.Is(resps[0].Err(), rpctypes.ErrCompacted) || resps[0].CompactRevision != r4 {
			bad("a watch from compacted revision %d: %d events, responses %v; want only ErrCompacted with CompactRevision %d", r3, nev, wD.hasErrs(), r4)
		} else {
			ok("a new watch from compacted revision %d: Err() = %q, CompactRevision %d", r3, resps[0].Err(), r4)
		}
	}
	px.setOpen(false)
}
