#!/usr/bin/env bash
# Installs what the test suite needs from outside PyPI, only when it is missing:
# Debian's redis-server (backplane tests), chromium (browser test), node/npm (browser and
# interop drivers), and the pinned npm packages of tests/browser. Idempotent and quiet when
# everything is present. Needs root for apt-get; without it, prints what to run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "system-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages: (re)install when node_modules is missing or older than the pinned lockfile.
if [ -f tests/browser/package.json ]; then
  cd tests/browser
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.wsflask-installed ]; then
    echo "system-deps: npm ci in tests/browser"
    npm ci --no-audit --no-fund --silent
    touch node_modules/.wsflask-installed
  fi
fi
