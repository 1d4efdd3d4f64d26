#!/usr/bin/env bash
# Runs every test file (node 20's test runner does not expand globs itself), one
# file at a time: the HSM fault tests and the kill -9 tests must not share the CPU
# with a crowd of others.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(find test -name '*.test.ts' | sort)
# The full TAP goes to a file for the record; standard output gets a line per file,
# the counts, and the tests that really failed (see the reporter).
tap=var/test-results.tap
mkdir -p var
echo "full TAP of this run: $tap"
exec node --import tsx --test --test-concurrency=1 --test-timeout=600000 \
  --test-reporter=tap --test-reporter-destination="$tap" \
  --test-reporter=./scripts/failures-reporter.mjs --test-reporter-destination=stdout \
  "${files[@]}" "$@"
