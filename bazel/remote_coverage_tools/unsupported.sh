#!/bin/sh
echo "coverage is not supported inside Bazel here; use gcov" >&2
exit 1
