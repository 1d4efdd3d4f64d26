#!/usr/bin/env bash
# Runs a command with SOFTHSM2_CONF pointing at a fresh, empty token directory that
# is removed afterwards. SoftHSM reads SOFTHSM2_CONF when a process starts, so the
# test runner (and every test process it forks) must inherit it from here.
set -euo pipefail
dir=$(mktemp -d "${TMPDIR:-/tmp}/custos-softhsm.XXXXXX")
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/tokens"
cat >"$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$dir/softhsm2.conf"
"$@"
