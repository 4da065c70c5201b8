# Thin convenience wrapper: every target only calls a script in scripts/ (which installs missing
# Debian packages first) or Bazel.
.PHONY: demo test test-asan build bench clean

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
