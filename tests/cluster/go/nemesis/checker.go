// A linearizability checker for histories of registers (one per key) with read, write and
// compare-and-swap: porcupine's algorithm (Wing & Gong's search with Lowe's cache of
// (linearized set, state) pairs), run on each key on its own (P-compositionality: a history of
// independent objects is linearizable iff each object's sub-history is).
//
// An operation whose outcome is unknown (a timeout, a lost connection: the client cannot tell
// whether it took effect) is "ambiguous": it has no return, so it may be linearized anywhere
// after its invocation, or never (linearizing it after every other operation is the same as never).
// An ambiguous read constrains nothing and is dropped. Written values must be unique per key and
// never empty: "" is the state of a key that does not exist.
package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// OpKind is what an operation did.
type OpKind int

const (
	OpRead  OpKind = iota // Value = what it returned ("" = no such key)
	OpWrite               // Value = what it wrote
	OpCAS                 // if the key's value is Expect, write Value; OK = whether it did;
	// a failed one also says what the value was (Got): etcd's Txn If(value = Expect)
	// Then(put Value) Else(get), so a failed CAS is a read
)

func (k OpKind) String() string {
	return [...]string{"read", "write", "cas"}[k]
}

// Op is one operation of a history. Call and Return are times on one monotonic clock (any unit);
// Return is ignored when Ambiguous.
type Op struct {
	Client    int
	Key       string
	Kind      OpKind
	Value     string // read: the result; write: the value written; cas: the new value
	Expect    string // cas: the value compared against
	OK        bool   // cas: succeeded (meaningless for ambiguous ones)
	Got       string // failed cas: the value it found ("" = no such key)
	Ambiguous bool   // outcome unknown: may or may not have taken effect
	Call      int64
	Return    int64
}

func (o Op) String() string {
	var s string
	switch o.Kind {
	case OpRead:
		s = fmt.Sprintf("read(%s) -> %q", o.Key, o.Value)
	case OpWrite:
		s = fmt.Sprintf("write(%s, %q)", o.Key, o.Value)
	case OpCAS:
		if o.OK || o.Ambiguous {
			s = fmt.Sprintf("cas(%s, %q -> %q) -> %v", o.Key, o.Expect, o.Value, o.OK)
		} else {
			s = fmt.Sprintf("cas(%s, %q -> %q) -> false, found %q", o.Key, o.Expect, o.Value, o.Got)
		}
	}
	if o.Ambiguous {
		return fmt.Sprintf("c%d %s ? [%s, ...]", o.Client, strings.TrimSuffix(strings.TrimSuffix(s, " -> false"), " -> true"), fmtT(o.Call))
	}
	return fmt.Sprintf("c%d %s [%s, %s]", o.Client, s, fmtT(o.Call), fmtT(o.Return))
}

func fmtT(t int64) string {
	return fmt.Sprintf("%.3fs", float64(t)/1e9)
}

// step is the register's sequential specification: whether op, applied to state, is legal, and
// the state after it. An ambiguous op is linearized as having taken effect (its not taking
// effect is the case where it is linearized last).
func step(state string, o *Op) (bool, string) {
	switch o.Kind {
	case OpRead:
		return o.Value == state, state
	case OpWrite:
		return true, o.Value
	default:
		if o.Ambiguous {
			if state == o.Expect {
				return true, o.Value
			}
			return true, state
		}
		if o.OK {
			return state == o.Expect, o.Value
		}
		return state != o.Expect && state == o.Got, state
	}
}

// KeyResult is the verdict on one key.
type KeyResult struct {
	Key          string
	Ops          int  // operations checked (ambiguous reads dropped)
	OK           bool // linearizable
	TimedOut     bool // the search ran out of its budget: no verdict
	Linearized   []*Op
	Stuck        []*Op // when not OK: the operations that could not be placed after the longest prefix
	SearchStates int
}

// Check checks a history, key by key. budget bounds the search of each key (0: none).
func Check(history []Op, budget time.Duration) []KeyResult {
	byKey := map[string][]*Op{}
	for i := range history {
		o := &history[i]
		if o.Kind == OpRead && o.Ambiguous {
			continue
		}
		byKey[o.Key] = append(byKey[o.Key], o)
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []KeyResult
	for _, k := range keys {
		ops := byKey[k]
		out = append(out, checkKey(k, pruneUnobserved(ops), budget))
	}
	return out
}

// pruneUnobserved drops the ambiguous writes and CASes whose value nobody observed (no read or
// failed CAS found it, no CAS expected it). This is exact, not a heuristic: while the key holds
// such a value u, no read, failed CAS or successful CAS can be linearized (each would have
// observed u), only ambiguous CASes expecting something else, which change nothing there and
// can go last; so a linearization with the op becomes one without it, and one without it
// becomes one with it placed last. Pruning keeps the search small under many timeouts.
func pruneUnobserved(ops []*Op) []*Op {
	seen := map[string]bool{}
	for _, o := range ops {
		switch {
		case o.Kind == OpRead:
			seen[o.Value] = true
		case o.Kind == OpCAS:
			seen[o.Expect] = true
			if !o.OK && !o.Ambiguous {
				seen[o.Got] = true
			}
		}
	}
	var out []*Op
	for _, o := range ops {
		if o.Ambiguous && o.Kind != OpRead && !seen[o.Value] {
			continue
		}
		out = append(out, o)
	}
	return out
}

// The search works on a doubly linked list of call and return events in time order; an
// operation is "lifted" out of it (both events) when linearized and put back on backtracking.
type event struct {
	op         *Op
	id         int
	isCall     bool
	match      *event // call: its return; return: its call
	prev, next *event
}

type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) set(i int)   { b[i/64] |= 1 << uint(i%64) }
func (b bitset) clear(i int) { b[i/64] &^= 1 << uint(i%64) }
func (b bitset) clone() bitset {
	c := make(bitset, len(b))
	copy(c, b)
	return c
}
func (b bitset) equal(c bitset) bool {
	for i := range b {
		if b[i] != c[i] {
			return false
		}
	}
	return true
}
func (b bitset) hash() uint64 {
	h := uint64(14695981039346656037)
	for _, w := range b {
		h ^= w
		h *= 1099511628211
	}
	return h
}
func (b bitset) count() int {
	n := 0
	for _, w := range b {
		for ; w != 0; w &= w - 1 {
			n++
		}
	}
	return n
}

type cacheEntry struct {
	lin   bitset
	state string
}

func checkKey(key string, ops []*Op, budget time.Duration) KeyResult {
	res := KeyResult{Key: key, Ops: len(ops)}
	n := len(ops)
	evs := make([]*event, 0, 2*n)
	for i, o := range ops {
		c := &event{op: o, id: i, isCall: true}
		r := &event{op: o, id: i}
		c.match, r.match = r, c
		evs = append(evs, c, r)
	}
	when := func(e *event) int64 {
		if e.isCall {
			return e.op.Call
		}
		if e.op.Ambiguous {
			return math.MaxInt64
		}
		return e.op.Return
	}
	// By time; at equal times calls first, so operations that touch are concurrent (the
	// permissive reading of a clock's limited resolution).
	sort.SliceStable(evs, func(i, j int) bool {
		ti, tj := when(evs[i]), when(evs[j])
		if ti != tj {
			return ti < tj
		}
		return evs[i].isCall && !evs[j].isCall
	})
	head := &event{}
	prev := head
	for _, e := range evs {
		prev.next, e.prev = e, prev
		prev = e
	}
	lift := func(c *event) {
		c.prev.next = c.next
		if c.next != nil {
			c.next.prev = c.prev
		}
		r := c.match
		r.prev.next = r.next
		if r.next != nil {
			r.next.prev = r.prev
		}
	}
	unlift := func(c *event) {
		r := c.match
		r.prev.next = r
		if r.next != nil {
			r.next.prev = r
		}
		c.prev.next = c
		if c.next != nil {
			c.next.prev = c
		}
	}
	type frame struct {
		call  *event
		state string
	}
	cache := map[uint64][]cacheEntry{}
	lin := newBitset(n)
	var stack []frame
	var best []int // ids of the longest linearized prefix seen
	var bestStuck []*Op
	state := ""
	deadline := time.Time{}
	if budget > 0 {
		deadline = time.Now().Add(budget)
	}
	steps := 0
	e := head.next
	for head.next != nil {
		steps++
		if steps%4096 == 0 && !deadline.IsZero() && time.Now().After(deadline) {
			res.TimedOut = true
			res.SearchStates = len(cache)
			return res
		}
		if e.isCall {
			ok, next := step(state, e.op)
			if ok {
				nl := lin.clone()
				nl.set(e.id)
				h := nl.hash()
				seen := false
				for _, ce := range cache[h] {
					if ce.state == next && ce.lin.equal(nl) {
						seen = true
						break
					}
				}
				if !seen {
					cache[h] = append(cache[h], cacheEntry{nl, next})
					stack = append(stack, frame{e, state})
					state = next
					lin.set(e.id)
					lift(e)
					e = head.next
					continue
				}
			}
			e = e.next
			continue
		}
		// A return whose call is not linearized: nothing later may go first. Remember the
		// longest prefix for the report, then backtrack.
		if len(stack) > len(best) {
			best = best[:0]
			for _, f := range stack {
				best = append(best, f.call.id)
			}
			bestStuck = bestStuck[:0]
			for x := head.next; x != nil && x != e.next; x = x.next {
				if x.isCall {
					bestStuck = append(bestStuck, x.op)
				}
			}
		}
		if len(stack) == 0 {
			res.SearchStates = len(cache)
			for _, id := range best {
				res.Linearized = append(res.Linearized, ops[id])
			}
			res.Stuck = bestStuck
			return res
		}
		f := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		state = f.state
		lin.clear(f.call.id)
		unlift(f.call)
		e = f.call.next
	}
	res.OK = true
	res.SearchStates = len(cache)
	return res
}

// Report describes a failed key: the end of the longest linearizable prefix found, and the
// operations that could not come next.
func (r KeyResult) Report(context int) string {
	var b strings.Builder
	if r.TimedOut {
		fmt.Fprintf(&b, "key %s: no verdict, the search of %d operations ran out of time (%d states)\n", r.Key, r.Ops, r.SearchStates)
		return b.String()
	}
	fmt.Fprintf(&b, "key %s: NOT linearizable (%d operations); the longest linearizable prefix has %d, ending:\n", r.Key, r.Ops, len(r.Linearized))
	from := len(r.Linearized) - context
	if from < 0 {
		from = 0
	}
	state := ""
	for i, o := range r.Linearized {
		_, state = step(state, o)
		if i >= from {
			fmt.Fprintf(&b, "    %s   => %q\n", o, state)
		}
	}
	fmt.Fprintf(&b, "  then none of these can be linearized next (state %q):\n", state)
	for i, o := range r.Stuck {
		if i == 2*context {
			fmt.Fprintf(&b, "    ... %d more\n", len(r.Stuck)-i)
			break
		}
		fmt.Fprintf(&b, "    %s\n", o)
	}
	return b.String()
}

// CheckDurable checks that a key's final value (final, read linearizably after every fault was
// healed) keeps every acknowledged write: it must come from a write (or successful CAS) w with no
// acknowledged write invoked after w returned (so w is the last acknowledged write, one
// concurrent with it, or an ambiguous one). "" (no key) is allowed only when nothing was
// acknowledged. An error says which acknowledged write was lost.
func CheckDurable(history []Op, key, final string) error {
	var writer *Op
	var acked []*Op
	for i := range history {
		o := &history[i]
		if o.Key != key || o.Kind == OpRead || (o.Kind == OpCAS && !o.Ambiguous && !o.OK) {
			continue
		}
		if o.Value == final && final != "" {
			writer = o
		}
		if !o.Ambiguous {
			acked = append(acked, o)
		}
	}
	if final == "" {
		if len(acked) > 0 {
			return fmt.Errorf("key %s is gone at the end, but %s was acknowledged", key, acked[len(acked)-1])
		}
		return nil
	}
	if writer == nil {
		return fmt.Errorf("key %s ends with %q, a value never written", key, final)
	}
	if writer.Ambiguous {
		return nil // it has no return: it may have taken effect after every acknowledged write
	}
	for _, a := range acked {
		if a.Call > writer.Return {
			return fmt.Errorf("key %s ends with %q from %s, but the later %s was acknowledged: lost", key, final, writer, a)
		}
	}
	return nil
}
