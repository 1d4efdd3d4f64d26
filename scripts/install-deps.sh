#!/usr/bin/env bash
# Installs what Custos needs on a fresh Debian machine: the Debian packages (as root)
# and the node modules (npm ci, rerun only when package-lock.json changes).
set -euo pipefail
cd "$(dirname "$0")/.."

# nginx, openssh-server and python3-prometheus-client (the Prometheus project's own parser
# of what GET /v1/metrics answers) are real peers the tests check Custos against.
packages=(softhsm2 opensc openssl ca-certificates nginx openssh-client openssh-server python3-prometheus-client)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=node_modules/.custos-lock
if [[ ! -f $stamp ]] || ! cmp -s package-lock.json "$stamp"; then
  echo "installing node modules (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi
