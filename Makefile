# Thin convenience wrapper: every target only calls a script in scripts/ (which installs missing
# Debian packages first) or Bazel.
.PHONY: demo test test-asan build bench bench-watch bench-compact clean

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

test-asan:
	bash scripts/test.sh --config=asan

build:
	bash scripts/deps.sh && bazel build //...

clean:
	bazel clean

# craft vs etcd side by side (scripts/bench.sh; about 4 minutes). Longer runs:
#   make bench BENCH_ARGS="--seconds 20 --rounds 5"
bench:
	bash scripts/bench.sh $(BENCH_ARGS)

# Watch fan-out, craft vs etcd (scripts/bench-watch.sh; 3 rounds of 10 s plus cluster starts).
bench-watch:
	bash scripts/bench-watch.sh $(BENCH_ARGS)

# Compaction of 1,000,000 revisions under put load, craft vs etcd (scripts/bench-compact.sh).
bench-compact:
	bash scripts/bench-compact.sh $(BENCH_ARGS)
