// Command nemesis runs a black-box linearizability test against a real 3-member craft cluster
// over mutual TLS (issue 18), with etcd's own Go client library (clientv3 from Debian's
// golang-etcd-server-dev). tests/cluster/nemesis_test.sh builds it (GOPATH mode, offline) and
// runs it; this program starts, kills and restarts the members itself.
//
// Clients (-clients, each bound to one member's client endpoint) run reads, writes and
// compare-and-swaps (Txn If value = E Then put Else get) on -keys keys, every written value
// unique, and record each operation's invocation and completion time, arguments and result. An
// operation that fails (timeout, lost connection, any error) has an unknown outcome: it stays
// open (ambiguous) in the history. Meanwhile the nemesis, driven by -seed, injects one fault at
// a time and heals it:
//
//	kill      kill -9 a member (the leader or another), restart it on the same data directory
//	pause     SIGSTOP the leader for longer than an election timeout, then SIGCONT
//	partition cut a member (the leader or another) off from both peers, or cut one peer link:
//	          iptables DROP rules in a chain of our own, jumped to from OUTPUT for loopback
//	          only ("-o lo"), matching the member's group id (each member runs with its own gid)
//	          and a peer port; the chain is flushed to heal and removed at exit
//	disk      one member's data directory is a small tmpfs from the start (-disk-mb); fill it
//	          with a file, write through that member, delete the file; the member must take
//	          writes again without a restart, or else have logged the cause ("no space") and
//	          exited 1 (craftd's answer to its node's fail-stop); it is then restarted
//
// At the end every fault is healed and, once the members agree, every key is read
// linearizably (the reads join the history) and serializably on each member (all must agree).
// Checks: the history is linearizable (checker.go, per key); every key's final value keeps its
// last acknowledged write (CheckDurable); members agree on the values and the revision; no member
// exited on its own except as the disk fault allows. Output: "ok:"/"FAIL:" lines, then
// "N failure(s)"; exit status 1 on any failure. -seed replays the fault schedule (the
// interleaving of clients is not replayable).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"math/rand"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"craftport"
	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/pkg/logutil"
	"go.etcd.io/etcd/pkg/transport"
	"go.uber.org/zap"
)

var (
	flagCraftd   = flag.String("craftd", "", "the craftd binary")
	flagCerts    = flag.String("certs", "", "certificate directory (craft-certs): ca.pem, client.pem, n1.pem ...")
	flagDir      = flag.String("dir", "", "a scratch directory for the members' data and logs")
	flagSeed     = flag.Int64("seed", 0, "seed of the fault schedule (0: from the clock)")
	flagDuration = flag.Duration("duration", 90*time.Second, "how long clients run under faults")
	flagClients  = flag.Int("clients", 6, "client goroutines (spread over the members' endpoints)")
	flagKeys     = flag.Int("keys", 4, "keys")
	flagRate     = flag.Int("rate", 40, "operations per second per client, at most")
	flagOpTO     = flag.Duration("op-timeout", time.Second, "a client operation's deadline")
	flagFaults   = flag.String("faults", "kill,pause,partition,disk", "faults to inject")
	flagChain    = flag.String("chain", "", "iptables chain of our own (default CRAFTNEM-<pid>)")
	flagGID      = flag.Int("gid-base", 47100, "member i runs with group id gid-base+i (iptables owner match)")
	flagDiskMB   = flag.Int("disk-mb", 64, "size of the tmpfs holding one member's data directory")
	flagHB       = flag.Int("heartbeat", 100, "members' --heartbeat-interval, ms")
	flagET       = flag.Int("election", 1000, "members' --election-timeout, ms")
	flagCheckTO  = flag.Duration("check-budget", 60*time.Second, "search budget of the checker per key")
	flagBudget   = flag.Duration("budget", 0, "fail if the whole run takes longer (default duration + 4 min + keys x check-budget)")
)

var (
	outMu sync.Mutex
	fails int
	t0    = time.Now()
)

func stamp() string { return fmt.Sprintf("[%7.3fs]", time.Since(t0).Seconds()) }

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
	fmt.Printf(stamp()+" "+format+"\n", a...)
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
	gid          int
	id           uint64
	log, data    string

	// guarded by procMu
	cmd      *exec.Cmd
	expect   bool // an exit now is ours (kill) or allowed (disk full)
	exited   chan struct{}
	running  bool
	paused   bool
	exitNote string
}

var (
	members  [3]*member
	procMu   sync.Mutex
	cluster  string
	diskIdx  = -1 // the member whose data directory is the tmpfs
	diskFull int32
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

// start runs member i (a restart when it has run: same data directory), with its own group id.
func start(i int) {
	m := members[i]
	c := *flagCerts
	args := []string{
		"--name", m.name, "--data-dir", m.data,
		"--listen-client-urls", ep(i), "--advertise-client-urls", ep(i),
		"--listen-peer-urls", fmt.Sprintf("https://127.0.0.1:%d", m.pport),
		"--initial-advertise-peer-urls", fmt.Sprintf("https://127.0.0.1:%d", m.pport),
		"--initial-cluster", cluster,
		"--heartbeat-interval", strconv.Itoa(*flagHB), "--election-timeout", strconv.Itoa(*flagET),
		"--cert-file", filepath.Join(c, m.name+".pem"), "--key-file", filepath.Join(c, m.name+"-key.pem"),
		"--trusted-ca-file", filepath.Join(c, "ca.pem"),
		"--peer-cert-file", filepath.Join(c, m.name+".pem"), "--peer-key-file", filepath.Join(c, m.name+"-key.pem"),
		"--peer-trusted-ca-file", filepath.Join(c, "ca.pem"),
		// Small segments and frequent snapshots: a full disk bites soon, snapshots happen.
		"--wal-segment-bytes", strconv.Itoa(4 << 20), "--snapshot-count", "2000",
		"--snapshot-catchup-entries", "500",
		// Old revisions go, so a long soak does not fill the small disk by itself.
		"--auto-compaction-mode", "revision", "--auto-compaction-retention", "2000",
	}
	f, err := os.OpenFile(m.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		die("log %s: %v", m.log, err)
	}
	defer f.Close()
	fmt.Fprintf(f, "=== nemesis: start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(*flagCraftd, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL,
		Credential: &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(m.gid), NoSetGroups: true}}
	if err := cmd.Start(); err != nil {
		die("start %s: %v", m.name, err)
	}
	exited := make(chan struct{})
	procMu.Lock()
	m.cmd, m.expect, m.exited, m.running, m.paused, m.exitNote = cmd, false, exited, true, false, ""
	procMu.Unlock()
	go func() {
		err := cmd.Wait()
		procMu.Lock()
		m.running = false
		unexpected := !m.expect
		if !unexpected {
			m.exitNote = fmt.Sprint(err)
		}
		if unexpected && i == diskIdx && atomic.LoadInt32(&diskFull) == 1 {
			unexpected = false
			m.exitNote = fmt.Sprint(err)
		}
		procMu.Unlock()
		if unexpected {
			bad("%s (pid %d) exited on its own: %v\n--- %s.log (last 20 lines)\n%s", m.name, cmd.Process.Pid, err, m.name, tail(m.log, 20))
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

func signalMember(i int, sig syscall.Signal) {
	procMu.Lock()
	defer procMu.Unlock()
	m := members[i]
	if m.running {
		_ = m.cmd.Process.Signal(sig)
		m.paused = sig == syscall.SIGSTOP
	}
}

func running(i int) bool {
	procMu.Lock()
	defer procMu.Unlock()
	return members[i].running
}

func tail(path string, n int) string {
	b, err := ioutil.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logSince returns member i's log lines after byte offset off that contain any of words.
func logSince(i int, off int64, words ...string) []string {
	f, err := os.Open(members[i].log)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(off, 0); err != nil {
		return nil
	}
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		for _, w := range words {
			if strings.Contains(strings.ToLower(l), w) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

func logSize(i int) int64 {
	st, err := os.Stat(members[i].log)
	if err != nil {
		return 0
	}
	return st.Size()
}

// ---- cleanup: whatever happens, no rule, no mount, no member stays behind -----------------------

var (
	cleanMu    sync.Mutex
	chainMade  bool
	mountPoint string
)

func ipt(args ...string) error {
	out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func cleanup() {
	cleanMu.Lock()
	defer cleanMu.Unlock()
	for i := range members {
		if members[i] != nil {
			signalMember(i, syscall.SIGCONT)
			kill9(i)
		}
	}
	if chainMade {
		_ = ipt("-D", "OUTPUT", "-o", "lo", "-j", *flagChain)
		_ = ipt("-F", *flagChain)
		if err := ipt("-X", *flagChain); err != nil {
			fmt.Printf("cleanup: %v\n", err)
		}
		chainMade = false
	}
	if mountPoint != "" {
		if out, err := exec.Command("umount", mountPoint).CombinedOutput(); err != nil {
			_ = exec.Command("umount", "-l", mountPoint).Run()
			fmt.Printf("cleanup: umount %s: %v %s\n", mountPoint, err, out)
		}
		mountPoint = ""
	}
}

func die(format string, a ...interface{}) {
	bad(format, a...)
	cleanup()
	for _, m := range members {
		if m != nil {
			fmt.Printf("--- %s.log (last 20 lines)\n%s\n", m.name, tail(m.log, 20))
		}
	}
	fmt.Printf("%d failure(s)\n", failures())
	os.Exit(1)
}

// ---- partitions ---------------------------------------------------------------------------------

// cut drops every packet member a sends to member b's peer port and b to a's: a's connections
// to b and b's to a stall both ways. Loopback only; matched by the sender's group id.
func cut(a, b int) {
	for _, p := range [][2]int{{a, b}, {b, a}} {
		from, to := members[p[0]], members[p[1]]
		if err := ipt("-A", *flagChain, "-o", "lo", "-p", "tcp", "-m", "owner", "--gid-owner", strconv.Itoa(from.gid),
			"--dport", strconv.Itoa(to.pport), "-j", "DROP"); err != nil {
			die("partition: %v", err)
		}
	}
}

func heal() {
	if err := ipt("-F", *flagChain); err != nil {
		die("heal: %v", err)
	}
}

// ---- clients and the history --------------------------------------------------------------------

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
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: tc, DialTimeout: 2 * time.Second, LogConfig: &lc})
	if err != nil {
		die("client %v: %v", eps, err)
	}
	return cli
}

func ctxT(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func now() int64 { return int64(time.Since(t0)) }

type recorder struct {
	mu     sync.Mutex
	ops    []Op
	errs   map[string]int
	diskEr map[string]int // errors of writes sent to the full member while its disk was full
}

var hist = &recorder{errs: map[string]int{}, diskEr: map[string]int{}}

func (h *recorder) add(o Op, err error, member int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, o)
	if err != nil {
		msg := errText(err)
		h.errs[msg]++
		if member == diskIdx && atomic.LoadInt32(&diskFull) == 1 && o.Kind != OpRead {
			h.diskEr[msg]++
		}
	}
}

func errText(err error) string {
	s := err.Error()
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(s, "context deadline exceeded") {
		return "deadline exceeded"
	}
	if len(s) > 100 {
		s = s[:100]
	}
	return s
}

// doOp runs one operation on cli and records it. write: put value; cas: if value = expect put
// value else get; read: get. Returns the value now known for the key ("" unknown).
func doOp(cli *clientv3.Client, client, member int, kind OpKind, key, value, expect string) string {
	o := Op{Client: client, Key: key, Kind: kind, Value: value, Expect: expect}
	ctx, cancel := ctxT(*flagOpTO)
	defer cancel()
	o.Call = now()
	var err error
	known := ""
	switch kind {
	case OpRead:
		var r *clientv3.GetResponse
		if r, err = cli.Get(ctx, key); err == nil {
			o.Value = ""
			if len(r.Kvs) > 0 {
				o.Value = string(r.Kvs[0].Value)
			}
			known = o.Value
		}
	case OpWrite:
		_, err = cli.Put(ctx, key, value)
		known = value
	case OpCAS:
		var r *clientv3.TxnResponse
		r, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", expect)).
			Then(clientv3.OpPut(key, value)).Else(clientv3.OpGet(key)).Commit()
		if err == nil {
			o.OK = r.Succeeded
			known = value
			if !r.Succeeded {
				if len(r.Responses) != 1 || r.Responses[0].GetResponseRange() == nil {
					bad("cas on %s: a failed Txn without its get: %v", key, r)
				} else if kvs := r.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
					o.Got = string(kvs[0].Value)
				}
				known = o.Got
			}
		}
	}
	o.Return = now()
	if err != nil {
		o.Ambiguous = true
		known = ""
	}
	hist.add(o, err, member)
	return known
}

func keyName(k int) string { return fmt.Sprintf("nem/k%d", k) }

func worker(c int, stop *int32, wg *sync.WaitGroup) {
	defer wg.Done()
	m := c % len(members)
	cli := newClient([]string{ep(m)})
	defer cli.Close()
	rng := rand.New(rand.NewSource(int64(c)*7919 + time.Now().UnixNano()))
	known := map[string]string{}
	seq := 0
	period := time.Second / time.Duration(*flagRate)
	next := time.Now()
	for atomic.LoadInt32(stop) == 0 {
		if d := time.Until(next); d > 0 {
			time.Sleep(d) // pacing, not synchronisation: bounds the history's size
		}
		next = next.Add(period)
		if time.Until(next) < -time.Second {
			next = time.Now()
		}
		key := keyName(rng.Intn(*flagKeys))
		x := rng.Intn(10)
		switch {
		case x < 4:
			known[key] = doOp(cli, c, m, OpRead, key, "", "")
		case x < 7 || known[key] == "":
			seq++
			known[key] = doOp(cli, c, m, OpWrite, key, fmt.Sprintf("c%d-%d", c, seq), "")
		default:
			seq++
			known[key] = doOp(cli, c, m, OpCAS, key, fmt.Sprintf("c%d-%d", c, seq), known[key])
		}
	}
}

// ---- cluster state ------------------------------------------------------------------------------

// leader: the index of the member every running member that answers names as leader (at least
// two answering), or -1.
func leader(cli *clientv3.Client) int {
	votes, answers := map[uint64]int{}, 0
	for i := range members {
		if !running(i) {
			continue
		}
		ctx, cancel := ctxT(500 * time.Millisecond)
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

// waitFor polls cond every 20 ms until it holds (true) or timeout passes (false).
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// healthy: all three answer Status, name one leader, and have applied the same index give or
// take slack (clients still writing move it between the three calls; a member catching up after
// a restart is thousands behind).
func healthy(cli *clientv3.Client, slack uint64) bool {
	var lead, lo, hi uint64
	for i := range members {
		ctx, cancel := ctxT(500 * time.Millisecond)
		st, err := cli.Status(ctx, ep(i))
		cancel()
		if err != nil || st.Leader == 0 || (i > 0 && st.Leader != lead) {
			return false
		}
		lead = st.Leader
		if a := st.RaftAppliedIndex; i == 0 || a < lo {
			lo = a
		}
		if a := st.RaftAppliedIndex; a > hi {
			hi = a
		}
	}
	return hi-lo <= slack
}

// ---- the nemesis --------------------------------------------------------------------------------

type nemesis struct {
	admin *clientv3.Client
	rng   *rand.Rand
	kinds []string
	done  map[string]int
}

func (n *nemesis) pickLeaderOr(other bool) (int, string) {
	l := leader(n.admin)
	if l < 0 || other {
		i := n.rng.Intn(3)
		return i, "member"
	}
	return l, "leader"
}

func (n *nemesis) hold(lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(n.rng.Int63n(int64(hi-lo)))) // the fault's length is the point
}

func (n *nemesis) run(until time.Time) {
	var order []string
	for time.Now().Before(until) {
		// Every kind once per round, in a seeded order: a short run still sees them all.
		if len(order) == 0 {
			for _, j := range n.rng.Perm(len(n.kinds)) {
				order = append(order, n.kinds[j])
			}
		}
		kind := order[0]
		order = order[1:]
		switch kind {
		case "kill":
			i, what := n.pickLeaderOr(n.rng.Intn(2) == 0)
			note("nemesis: kill -9 %s (%s)", members[i].name, what)
			kill9(i)
			n.hold(300*time.Millisecond, 3*time.Second)
			note("nemesis: restart %s", members[i].name)
			start(i)
		case "pause":
			i, what := n.pickLeaderOr(false)
			note("nemesis: SIGSTOP %s (%s)", members[i].name, what)
			signalMember(i, syscall.SIGSTOP)
			n.hold(time.Duration(*flagET)*3/2*time.Millisecond, time.Duration(*flagET)*4*time.Millisecond)
			note("nemesis: SIGCONT %s", members[i].name)
			signalMember(i, syscall.SIGCONT)
		case "partition":
			i, what := n.pickLeaderOr(n.rng.Intn(2) == 0)
			a, b := (i+1)%3, (i+2)%3
			if n.rng.Intn(3) == 0 {
				note("nemesis: cut the link %s <-> %s (%s %s)", members[i].name, members[a].name, what, members[i].name)
				cut(i, a)
			} else {
				note("nemesis: isolate %s (%s) from %s and %s", members[i].name, what, members[a].name, members[b].name)
				cut(i, a)
				cut(i, b)
			}
			n.hold(time.Second, 5*time.Second)
			note("nemesis: heal the partition")
			heal()
		case "disk":
			n.disk()
		}
		n.done[kind]++
		if !waitFor(30*time.Second, func() bool { return healthy(n.admin, 200) }) {
			bad("after %s: the cluster is not healthy (one leader, all applied alike) within 30 s", kind)
			for i := range members {
				note("--- %s.log (last 10 lines)\n%s", members[i].name, tail(members[i].log, 10))
			}
		}
		n.hold(500*time.Millisecond, 2*time.Second)
	}
}

// disk fills the tmpfs under diskIdx's data directory, writes through that member, frees it.
func (n *nemesis) disk() {
	i := diskIdx
	m := members[i]
	fill := filepath.Join(mountPoint, "nemesis-fill")
	off := logSize(i)
	note("nemesis: fill %s's data directory (%d MiB tmpfs)", m.name, *flagDiskMB)
	atomic.StoreInt32(&diskFull, 1)
	f, err := os.Create(fill)
	if err != nil {
		die("disk: %v", err)
	}
	buf := make([]byte, 1<<20)
	var filled int64
	for {
		k, err := f.Write(buf)
		filled += int64(k)
		if err != nil {
			break
		}
	}
	f.Close()
	note("nemesis: %s's disk full (%d MiB written)", m.name, filled>>20)
	// Writes through the full member until one fails or 8 s pass (the clients add more).
	cli := newClient([]string{ep(i)})
	var errs []string
	acked := 0
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) && len(errs) < 3 {
		ctx, cancel := ctxT(*flagOpTO)
		c := now()
		v := fmt.Sprintf("disk-%d", c)
		_, err := cli.Put(ctx, keyName(0), v)
		cancel()
		o := Op{Client: 1000, Key: keyName(0), Kind: OpWrite, Value: v, Call: c, Return: now(), Ambiguous: err != nil}
		hist.add(o, err, i)
		if err != nil {
			errs = append(errs, errText(err))
		} else {
			acked++
		}
		time.Sleep(50 * time.Millisecond) // pacing
	}
	cli.Close()
	lines := logSince(i, off, "no space", "enospc", "space exceeded", "stopping writes", "input/output")
	if len(errs) == 0 {
		note("disk: %d writes through the full %s all acknowledged (preallocated WAL segment, store pages reused)", acked, m.name)
	} else {
		note("disk: through the full %s: %d acknowledged, then errors %q", m.name, acked, errs)
	}
	for j, l := range lines {
		if j == 3 {
			note("disk: ... %d more log lines", len(lines)-3)
			break
		}
		note("disk: %s log: %s", m.name, l)
	}
	if err := os.Remove(fill); err != nil {
		die("disk: free: %v", err)
	}
	note("nemesis: %s's disk freed", m.name)
	// Does it take writes again by itself?
	cli = newClient([]string{ep(i)})
	defer cli.Close()
	put := func() bool {
		ctx, cancel := ctxT(*flagOpTO)
		defer cancel()
		c := now()
		v := fmt.Sprintf("disk-%d", c)
		_, err := cli.Put(ctx, keyName(0), v)
		hist.add(Op{Client: 1000, Key: keyName(0), Kind: OpWrite, Value: v, Call: c, Return: now(), Ambiguous: err != nil}, err, -1)
		return err == nil
	}
	recovered := running(i) && waitFor(10*time.Second, func() bool { return put() && healthy(n.admin, 200) })
	atomic.StoreInt32(&diskFull, 0)
	if recovered {
		n.done["disk-live"]++
		note("disk: %s takes writes again without a restart", m.name)
		return
	}
	// It did not: it must have said why and exited cleanly (exit 1), so it can be restarted.
	stopped := logSince(i, off, "no space", "enospc", "stopping writes", "input/output", "i/o error")
	cause := logSince(i, off, "no space", "space exceeded")
	procMu.Lock()
	exitNote, alive := m.exitNote, m.running
	procMu.Unlock()
	switch {
	case len(stopped) == 0:
		bad("disk: %s neither recovered within 10 s of freeing its disk nor logged why (running %v, exit %s)\n%s",
			m.name, alive, exitNote, tail(m.log, 10))
	case len(cause) == 0:
		bad("disk: %s stopped without logging the cause (no \"no space\" in its log): %s", m.name, stopped[0])
	case alive:
		bad("disk: %s stopped writing (%s) but still runs 10 s after its disk was freed, neither serving nor exiting", m.name, stopped[0])
	case exitNote != "exit status 1":
		bad("disk: %s ended with %q, not a clean exit 1; its log: %s", m.name, exitNote, stopped[0])
	default:
		n.done["disk-exit"]++
		note("disk: %s exited 1; its log says: %s", m.name, stopped[0])
	}
	note("nemesis: restart %s", m.name)
	kill9(i)
	start(i)
}

// ---- main ---------------------------------------------------------------------------------------

func main() {
	runtime.LockOSThread() // Pdeathsig is per thread: the members die with this one
	flag.Parse()
	if *flagCerts == "" || *flagDir == "" || *flagCraftd == "" {
		fmt.Fprintln(os.Stderr, "usage: nemesis -craftd BIN -certs DIR -dir DIR [-seed N] [-duration D]")
		os.Exit(2)
	}
	if *flagChain == "" {
		*flagChain = fmt.Sprintf("CRAFTNEM-%d", os.Getpid())
	}
	if *flagBudget == 0 {
		*flagBudget = *flagDuration + 4*time.Minute + time.Duration(*flagKeys)*(*flagCheckTO)
	}
	seed := *flagSeed
	if seed == 0 {
		seed = time.Now().UnixNano() % 1000000
	}
	rng := rand.New(rand.NewSource(seed))
	fmt.Printf("nemesis: seed %d (-seed %d replays the fault schedule), %s of faults %s, %d clients, %d keys, heartbeat %d ms, election timeout %d ms\n",
		seed, seed, *flagDuration, *flagFaults, *flagClients, *flagKeys, *flagHB, *flagET)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		die("interrupted (%v)", s)
	}()
	budget := time.AfterFunc(*flagBudget, func() { die("the run took longer than %s", *flagBudget) })
	defer budget.Stop()

	var kinds []string
	for _, k := range strings.Split(*flagFaults, ",") {
		switch k {
		case "kill", "pause", "partition", "disk":
			kinds = append(kinds, k)
		case "":
		default:
			die("-faults: unknown fault %q", k)
		}
	}
	for i := range members {
		members[i] = &member{name: fmt.Sprintf("n%d", i+1), cport: freePort(), pport: freePort(), gid: *flagGID + i}
		members[i].log = filepath.Join(*flagDir, members[i].name+".log")
		members[i].data = filepath.Join(*flagDir, members[i].name)
		cluster += fmt.Sprintf("%s%s=https://127.0.0.1:%d", map[bool]string{true: ",", false: ""}[i > 0], members[i].name, members[i].pport)
	}
	// The chain first: without iptables there is no partition, and the run fails rather than
	// pretend.
	if err := ipt("-N", *flagChain); err != nil {
		die("iptables is needed for partitions (run as root; apt-get install iptables): %v", err)
	}
	chainMade = true
	if err := ipt("-I", "OUTPUT", "-o", "lo", "-j", *flagChain); err != nil {
		die("iptables: %v", err)
	}
	for _, k := range kinds {
		if k == "disk" {
			diskIdx = rng.Intn(3)
		}
	}
	if diskIdx >= 0 {
		d := members[diskIdx].data
		if err := os.MkdirAll(d, 0o700); err != nil {
			die("%v", err)
		}
		out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm,mode=0700", *flagDiskMB), "tmpfs", d).CombinedOutput()
		if err != nil {
			die("mounting a tmpfs for the disk-full fault needs root (mount -t tmpfs): %v %s", err, out)
		}
		mountPoint = d
		note("%s's data directory is a %d MiB tmpfs", members[diskIdx].name, *flagDiskMB)
	}
	defer cleanup()
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
	if !waitFor(30*time.Second, func() bool { return healthy(admin, 0) }) {
		die("no healthy cluster within 30 s")
	}
	ok("cluster up, leader %s", members[leader(admin)].name)

	var stop int32
	var wg sync.WaitGroup
	for c := 0; c < *flagClients; c++ {
		wg.Add(1)
		go worker(c, &stop, &wg)
	}
	nem := &nemesis{admin: admin, rng: rng, kinds: kinds, done: map[string]int{}}
	if len(kinds) > 0 {
		time.Sleep(time.Second) // some history before the first fault
		nem.run(time.Now().Add(*flagDuration))
	} else {
		time.Sleep(*flagDuration)
	}
	atomic.StoreInt32(&stop, 1)
	wg.Wait()
	note("clients stopped; faults: %v", nem.done)

	// Heal everything, then the final reads.
	heal()
	for i := range members {
		signalMember(i, syscall.SIGCONT)
		if !running(i) {
			start(i)
		}
	}
	if !waitFor(60*time.Second, func() bool { return healthy(admin, 0) }) {
		bad("at the end: the cluster is not healthy within 60 s")
	}
	final(admin)
	admin.Close()
	cleanup()
	fmt.Printf("%d failure(s)\n", failures())
	if failures() > 0 {
		os.Exit(1)
	}
}

// final reads every key linearizably (into the history), checks the history, the acknowledged
// writes, and that every member holds the same values and revision.
func final(admin *clientv3.Client) {
	finals := map[string]string{}
	for k := 0; k < *flagKeys; k++ {
		key := keyName(k)
		var v string
		if !waitFor(20*time.Second, func() bool {
			ctx, cancel := ctxT(2 * time.Second)
			defer cancel()
			c := now()
			r, err := admin.Get(ctx, key)
			if err != nil {
				return false
			}
			v = ""
			if len(r.Kvs) > 0 {
				v = string(r.Kvs[0].Value)
			}
			hist.add(Op{Client: 999, Key: key, Kind: OpRead, Value: v, Call: c, Return: now()}, nil, -1)
			return true
		}) {
			bad("final read of %s failed for 20 s", key)
			continue
		}
		finals[key] = v
	}
	// Every member, serializably, once all have applied the same index.
	var revs []int64
	for i := range members {
		cli := newClient([]string{ep(i)})
		ctx, cancel := ctxT(2 * time.Second)
		st, err := cli.Status(ctx, ep(i))
		cancel()
		if err != nil {
			bad("final status of %s: %v", members[i].name, err)
			cli.Close()
			continue
		}
		revs = append(revs, st.Header.Revision)
		for key, want := range finals {
			ctx, cancel := ctxT(2 * time.Second)
			r, err := cli.Get(ctx, key, clientv3.WithSerializable())
			cancel()
			got := ""
			if err == nil && len(r.Kvs) > 0 {
				got = string(r.Kvs[0].Value)
			}
			if err != nil || got != want {
				bad("%s holds %s = %q (err %v), the cluster %q", members[i].name, key, got, err, want)
			}
		}
		cli.Close()
	}
	if len(revs) == 3 && revs[0] == revs[1] && revs[1] == revs[2] {
		ok("all members at revision %d with the same values", revs[0])
	} else {
		bad("members' revisions differ: %v", revs)
	}

	hist.mu.Lock()
	h := append([]Op(nil), hist.ops...)
	errs, diskErrs := hist.errs, hist.diskEr
	hist.mu.Unlock()
	var reads, writes, cass, casOK, amb int
	for _, o := range h {
		switch {
		case o.Ambiguous:
			amb++
		case o.Kind == OpRead:
			reads++
		case o.Kind == OpWrite:
			writes++
		case o.OK:
			cass++
			casOK++
		default:
			cass++
		}
	}
	note("history: %d operations: %d reads, %d writes, %d CAS (%d succeeded) completed; %d failed or timed out (open)",
		len(h), reads, writes, cass, casOK, amb)
	printTop("errors", errs, 6)
	if diskIdx >= 0 {
		printTop("errors of writes through the member with the full disk", diskErrs, 6)

	}
	if reads == 0 || writes == 0 || casOK == 0 {
		bad("too little completed to check anything (reads %d, writes %d, successful CAS %d)", reads, writes, casOK)
	}
	t := time.Now()
	lin := true
	for _, kr := range Check(h, *flagCheckTO) {
		if kr.TimedOut || !kr.OK {
			lin = false
			bad("%s", kr.Report(8))
		}
	}
	if lin {
		ok("the history is linearizable (%d keys, checked in %s)", *flagKeys, time.Since(t).Round(time.Millisecond))
	} else {
		dumpHistory(h)
	}
	for key, v := range finals {
		if err := CheckDurable(h, key, v); err != nil {
			bad("%v", err)
		}
	}
	if len(finals) == *flagKeys {
		ok("every acknowledged write survives: the final values %v", sortedMap(finals))
	}
}

func clearDiskError(msg string) bool {
	m := strings.ToLower(msg)
	for _, w := range []string{"space exceeded", "input/output", "no space", "eio", "i/o error"} {
		if strings.Contains(m, w) {
			return true
		}
	}
	return false
}

func printTop(what string, m map[string]int, n int) {
	type kv struct {
		k string
		v int
	}
	var l []kv
	for k, v := range m {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v })
	for i, e := range l {
		if i == n {
			note("  ... %d more kinds", len(l)-n)
			break
		}
		note("%s: %d x %q", what, e.v, e.k)
	}
}

func sortedMap(m map[string]string) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	for _, k := range ks {
		fmt.Fprintf(&b, "%s=%s ", k, m[k])
	}
	return strings.TrimSpace(b.String())
}

// dumpHistory writes the whole history where Bazel keeps test outputs (or the scratch dir).
func dumpHistory(h []Op) {
	dir := os.Getenv("TEST_UNDECLARED_OUTPUTS_DIR")
	if dir == "" {
		dir = *flagDir
	}
	sort.Slice(h, func(i, j int) bool { return h[i].Call < h[j].Call })
	var b strings.Builder
	for _, o := range h {
		b.WriteString(o.String())
		b.WriteByte('\n')
	}
	p := filepath.Join(dir, "nemesis-history.txt")
	if err := ioutil.WriteFile(p, []byte(b.String()), 0o644); err == nil {
		fmt.Printf("the history: %s\n", p)
	}
}
