#!/usr/bin/env bash
# Runs the README's "complete run" example, verbatim, against a real `stead serve` started the
# way the README says. The example is extracted from README.md, so the two cannot drift.
set -euo pipefail
cd "$(dirname "$0")/.."

example=$(awk '/<!-- ci:example:begin -->/{on=1; next} /<!-- ci:example:end -->/{on=0} on && !/^```/' README.md)
[ -n "$example" ] || { echo "README example block not found" >&2; exit 1; }

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export STEAD_LISTEN="127.0.0.1:$port" STEAD_URL="http://127.0.0.1:$port" STEAD_DATA_DIR="$work/stead-data"

cargo build -q --release -p stead
cargo run -q --release -p stead -- serve >"$work/serve.out" 2>"$work/serve.err" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 3000); do   # up to 5 minutes: cargo may wait for a build lock
  grep -q "stead listening on" "$work/serve.err" && break
  kill -0 $server 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
  sleep 0.1
done
grep -q "stead listening on" "$work/serve.err" || { echo "server did not start" >&2; cat "$work/serve.err" >&2; exit 1; }

bash -euo pipefail -c "$example" >"$work/example.out" 2>"$work/example.err" || {
  echo "README example failed:" >&2; cat "$work/example.out" "$work/example.err" >&2; exit 1; }
cat "$work/example.out"
for expected in "echo: hello, Stead" "clock returned: " "get_weather returned: sunny, 21 C" "run_completed" "ok: "; do
  grep -qF "$expected" "$work/example.out" || { echo "README example output lacks: $expected" >&2; cat "$work/example.err" >&2; exit 1; }
done
echo "README example: ok"
