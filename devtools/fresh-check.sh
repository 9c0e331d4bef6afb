#!/usr/bin/env bash
# `make fresh-check`: what a new user gets on a bare machine, proven end to end.
#
# For each Debian suite in FRESH_SUITES (default: bookworm trixie), a minimal system with only
# python3, make, git, curl and ca-certificates (debootstrap, cached under .stack/fresh/) gets a
# fresh clone of this checkout's HEAD and runs, with no other step:
#   1. `make demo` until GET /prices/BTCUSDT answers a price (first run: installs everything),
#   2. `make demo` again (second run: everything cached),
#   3. `make test` (unless FRESH_TESTS=0).
# Then the wheel (`make dist`) goes into a clean venv outside the checkout: `crypto-pipeline
# migrate` against a database and `crypto-pipeline serve` answering /health.
#
# Needs root and debootstrap (apt-get install debootstrap). Not in CI: a run takes ~15 min per
# suite. The host's CA bundle (SSL_CERT_FILE) is handed to the chroot, as a company proxy's CA
# would be. Timings go to stdout and to .stack/fresh/timings.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/.stack/fresh
SUITES=${FRESH_SUITES-bookworm trixie}  # FRESH_SUITES= (empty): only the wheel check
PORT=${FRESH_PORT:-18000}
SIM_PORT=${FRESH_SIM_PORT:-19443}
CA=${SSL_CERT_FILE:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}
mkdir -p "$WORK"
TIMINGS=$WORK/timings.txt
: >"$TIMINGS"

say() { echo "fresh-check: $*" | tee -a "$TIMINGS"; }
[ "$(id -u)" = 0 ] || { echo "fresh-check: needs root (chroot, mounts)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "fresh-check: apt-get install debootstrap" >&2; exit 1; }

MOUNTED=()
cleanup() {
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -lf "${MOUNTED[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

in_chroot() { # in_chroot DIR SCRIPT: a login-less shell with a bare environment
  env -i HOME=/root TERM=dumb LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/root/ca.crt REQUESTS_CA_BUNDLE=/root/ca.crt chroot "$1" /bin/bash -c "$2"
}

demo_until_price() { # demo_until_price DIR LABEL: run `make demo`, wait for a new price, stop it
  local dir=$1 label=$2 start
  start=$(date +%s)
  # A trade of this run: the table keeps the last run's trades, so an older price proves nothing.
  in_chroot "$dir" "cd /root/app && exec make demo PORT=$PORT SIM_PORT=$SIM_PORT" >"$WORK/demo-$label.log" 2>&1 &
  local demo=$!
  for _ in $(seq 1 1200); do
    if price=$(curl -sf "127.0.0.1:$PORT/prices/BTCUSDT" 2>/dev/null) &&
      python3 -c 'import json, sys; sys.exit(json.loads(sys.argv[1])["trade_time"] < int(sys.argv[2]) * 1000)' "$price" "$start"; then
      say "$label: make demo answered a price after $(($(date +%s) - start)) s: $price"
      break
    fi
    if ! kill -0 "$demo" 2>/dev/null; then
      say "$label: make demo exited before answering; last lines:"; tail -20 "$WORK/demo-$label.log"; return 1
    fi
    sleep 1
  done
  # Stop it the way a user would (Ctrl+C), then the stack.
  pkill -INT -f "$dir/root/app/.venv/bin/uvicorn|uvicorn api.main:app --host 127.0.0.1 --port $PORT" || true
  wait "$demo" 2>/dev/null || true
  in_chroot "$dir" "cd /root/app && make stack-down" >/dev/null 2>&1 || true
  curl -sf "127.0.0.1:$PORT/prices/BTCUSDT" >/dev/null 2>&1 && { say "$label: demo still running"; return 1; }
  return 0
}

for suite in $SUITES; do
  rootfs=$WORK/rootfs-$suite
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    say "$suite: building a minimal system with debootstrap"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,make,git,curl,ca-certificates "$suite" "$rootfs" >"$WORK/debootstrap-$suite.log"
  fi
  dir=$WORK/run-$suite
  rm -rf "$dir"
  cp -a "$rootfs" "$dir"
  cp "$CA" "$dir/root/ca.crt"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  # debootstrap writes no /etc/hosts (an installed system has one): without it `localhost`
  # does not resolve, and chromedriver, which the browser test talks to there, is unreachable.
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$dir/etc/hosts"
  mount -t proc proc "$dir/proc" && MOUNTED+=("$dir/proc")
  mount --rbind /dev "$dir/dev" && MOUNTED+=("$dir/dev")
  mount -t sysfs sys "$dir/sys" && MOUNTED+=("$dir/sys")
  git clone -q --no-local "$ROOT" "$dir/root/app"
  say "$suite: $(in_chroot "$dir" 'python3 --version') on $(in_chroot "$dir" '. /etc/os-release; echo $PRETTY_NAME')"
  demo_until_price "$dir" "$suite first run"
  demo_until_price "$dir" "$suite second run"
  if [ "${FRESH_TESTS:-1}" = 1 ]; then
    start=$(date +%s)
    if in_chroot "$dir" "cd /root/app && make test PYTEST_ARGS='-q -p no:cacheprovider'" >"$WORK/test-$suite.log" 2>&1; then
      say "$suite: make test passed in $(($(date +%s) - start)) s: $(grep -E '^[0-9]+ passed' "$WORK/test-$suite.log" | tail -1)"
    else
      say "$suite: make test FAILED after $(($(date +%s) - start)) s; see $WORK/test-$suite.log"; tail -30 "$WORK/test-$suite.log"; exit 1
    fi
  fi
  cleanup; MOUNTED=()
done

say "wheel: make dist, a clean venv outside the checkout"
make -s dist >/dev/null
venv=$WORK/wheel-venv
rm -rf "$venv" && python3 -m venv "$venv"
"$venv/bin/pip" install -q "$ROOT"/dist/*.whl
make -s stack-up >/dev/null
# shellcheck disable=SC1091
source .stack/env
cd /tmp
"$venv/bin/crypto-pipeline" migrate && say "wheel: crypto-pipeline migrate reached head from $(pwd)"
PIPELINE_ROLES=none PORT=$PORT "$venv/bin/crypto-pipeline" serve >"$WORK/serve.log" 2>&1 &
serve=$!
for _ in $(seq 1 60); do
  if health=$(curl -sf "127.0.0.1:$PORT/health"); then say "wheel: crypto-pipeline serve answered /health: $health"; break; fi
  sleep 1
done
kill -INT "$serve"; wait "$serve" || true
[ -n "${health:-}" ] || { say "wheel: serve never answered /health"; tail -20 "$WORK/serve.log"; exit 1; }
say "done"
