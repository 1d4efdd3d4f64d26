#!/usr/bin/env bash
# Provisions the development HSM: a SoftHSM token "custos-dev" whose token directory,
# config and PINs live under var/ (PIN files mode 0600). Reuses what exists.
set -euo pipefail
cd "$(dirname "$0")/.."
var=$(pwd)/var
umask 077
mkdir -p "$var/tokens"
conf=$var/softhsm2.conf
if [[ ! -f $conf ]]; then
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
    "$var/tokens" >"$conf"
fi
export SOFTHSM2_CONF=$conf
[[ -f $var/hsm.pin ]] || head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24 >"$var/hsm.pin"
[[ -f $var/hsm.so-pin ]] || head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24 >"$var/hsm.so-pin"
if ! softhsm2-util --show-slots 2>/dev/null | grep -q 'Label:[[:space:]]*custos-dev[[:space:]]*$'; then
  # softhsm2-util takes PINs only as arguments: acceptable for a development token
  # (Custos itself reads its PIN from var/hsm.pin, never from argv).
  softhsm2-util --init-token --free --label custos-dev \
    --pin "$(cat "$var/hsm.pin")" --so-pin "$(cat "$var/hsm.so-pin")" >/dev/null
  echo "created the development SoftHSM token custos-dev under var/tokens"
fi
