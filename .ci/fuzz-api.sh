#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis (pinned in .ci/schemathesis/requirements.txt, installed
# into a venv in a cache outside the clone) against a real `stead serve`: release binary, a
# temporary data directory, two tenants with their own API keys, the example agent applied for
# both, every model name routed to the offline scripted model. Requests are generated from the
# committed openapi.json (checked first to be what the server serves at /openapi.json) and sent
# as tenant `acme`. Fails on any 5xx, on an answer the document does not describe (status,
# content type, headers, body schema), on a request the document forbids being accepted, and
# when the other tenant's data changed.
#
#   bash .ci/fuzz-api.sh [extra schemathesis args, e.g. --include-path /v1/agents]
#
#   STEAD_FUZZ_MAX_EXAMPLES  test cases per operation and phase [default: 50: ~3000 requests, under a minute]
#   STEAD_FUZZ_SEED          hypothesis seed [default: random; printed so a failure can be replayed]
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/stead-target}
export CARGO_TERM_COLOR=never

# ---- schemathesis, pinned, cached by the hash of python's version and the requirements ----
req="$root/.ci/schemathesis/requirements.txt"
stamp="$( (python3 --version; cat "$req") | sha256sum | cut -c1-16)"
venv="${STEAD_TOOLS_DIR:-$HOME/.cache/stead-tools}/schemathesis/$stamp"
if [[ ! -f "$venv/.complete" ]]; then
    echo "fuzz-api: installing schemathesis into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    # Every transitive dependency is pinned in the file, so --no-deps keeps the set exact.
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req" 1>&2
    "$venv/bin/pip" check 1>&2
    touch "$venv/.complete"
else
    echo "fuzz-api: schemathesis cached in $venv" >&2
fi
st="$venv/bin/schemathesis"
echo "fuzz-api: $("$st" --version)" >&2

# ---- a real server ----
echo "== fuzz-api: building stead (release)" >&2
cargo build --release -q -p stead
bin="$CARGO_TARGET_DIR/release/stead"

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
key_acme="fuzz-acme-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
key_beta="fuzz-beta-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# Keys are passed in the environment, not on command lines (`ps` shows arguments). A `wait`
# blocks 5 s at most, so a generated request that waits for a run that cannot finish (queued
# behind one waiting for a client tool) ends well within schemathesis' request timeout.
STEAD_API_KEYS="acme:$key_acme:approver,beta:$key_beta" \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --model-route '*=scripted' --max-wait-secs 5 \
    >"$work/serve.out" 2>"$work/serve.err" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do
    grep -q "stead listening on" "$work/serve.err" && break
    kill -0 $server 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
    sleep 0.1
done
grep -q "stead listening on" "$work/serve.err" || { echo "fuzz-api: server did not start" >&2; cat "$work/serve.err" >&2; exit 1; }

# The committed document is the one the server serves.
curl -sf "$url/openapi.json" >"$work/served.json"
python3 - "$root/openapi.json" "$work/served.json" <<'EOF'
import json, sys
committed, served = (json.load(open(p)) for p in sys.argv[1:])
if committed != served:
    sys.exit("fuzz-api: /openapi.json differs from the committed openapi.json (UPDATE_OPENAPI=1 cargo test -p stead-api --test openapi)")
EOF

# Real data for both tenants: the example agent, a session, a finished run, a run waiting for
# a client tool's output.
api() { # KEY METHOD PATH [curl args...]: prints the body, fails on a non-2xx
    local key=$1 method=$2 path=$3; shift 3
    curl -sS --fail-with-body -X "$method" -H "Authorization: Bearer $key" "$@" "$url$path"
}
id_of() { python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'; }
seed_tenant() { # KEY: prints "SESSION RUN", RUN waiting for a client tool's output
    api "$1" POST /v1/agents -H 'content-type: application/yaml' --data-binary @examples/helper.yaml >/dev/null
    local session run
    session=$(api "$1" POST /v1/sessions -H 'content-type: application/json' -d '{"agent": "helper"}' | id_of)
    api "$1" POST "/v1/sessions/$session/runs" -H 'content-type: application/json' \
        -d '{"input": "hello, Stead", "wait": true}' >/dev/null
    run=$(api "$1" POST "/v1/sessions/$session/runs" -H 'content-type: application/json' \
        -d '{"input": "call get_weather {\"city\": \"Paris\"}", "wait": true}' | id_of)
    echo "$session $run"
}
# Tenant acme's key and ids are what the generated requests use (.ci/schemathesis/schemathesis.toml).
read -r STEAD_FUZZ_SESSION STEAD_FUZZ_RUN < <(seed_tenant "$key_acme")
export STEAD_FUZZ_SESSION STEAD_FUZZ_RUN STEAD_FUZZ_KEY="$key_acme"
seed_tenant "$key_beta" >/dev/null
# What tenant beta owns, to compare after the fuzzing (which only ever uses acme's key).
beta_state() {
    for path in /v1/agents /v1/sessions "/v1/agents/helper/versions"; do
        api "$key_beta" GET "$path?limit=100"
    done
}
beta_before=$(beta_state)

# ---- schemathesis ----
max_examples=${STEAD_FUZZ_MAX_EXAMPLES:-50}
seed=${STEAD_FUZZ_SEED:-$RANDOM$RANDOM}
echo "== fuzz-api: schemathesis against $url (max $max_examples examples per operation, seed $seed)" >&2
started=$(date +%s)
status=0
# Checks: all of them but
# - positive_data_acceptance: it expects a 2xx for every schema-valid request, but a valid
#   request naming an id that does not exist is rightly a 404 (and most generated ids do not);
# - use_after_free and ensure_resource_availability: they follow OpenAPI links, and the
#   document declares none, so they could never run.
# `GET /v1/approvals/stream` is left out: it is a server-sent event stream that stays open by
# design until the client leaves, so every request would end in schemathesis' timeout.
# (`/v1/sessions/{id}/events` streams only when asked with `Accept: text/event-stream`.)
timeout 600 "$st" --config-file "$root/.ci/schemathesis/schemathesis.toml" run "$root/openapi.json" \
    --url "$url" \
    --checks all \
    --exclude-checks positive_data_acceptance,use_after_free,ensure_resource_availability \
    --exclude-path /v1/approvals/stream \
    --max-examples "$max_examples" \
    --seed "$seed" \
    --request-timeout 30 \
    --workers 2 \
    --generation-database none \
    --report junit --report-dir "$work/report" \
    --no-color \
    "$@" || status=$?
elapsed=$(($(date +%s) - started))
echo "fuzz-api: schemathesis exited $status after ${elapsed}s" >&2

# The server survived and tenant beta's data is untouched.
kill -0 $server 2>/dev/null || { echo "fuzz-api: stead died during the fuzzing" >&2; cat "$work/serve.err" >&2; exit 1; }
[[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/healthz")" == 200 ]] || { echo "fuzz-api: /healthz is not 200 after the fuzzing" >&2; exit 1; }
# The generated requests were authenticated as acme: they made sessions beside the seeded one.
acme_sessions=$(api "$key_acme" GET "/v1/sessions?limit=100" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["data"]))')
[[ "$acme_sessions" -gt 1 ]] || { echo "fuzz-api: tenant acme has $acme_sessions session(s): did the requests carry its key?" >&2; exit 1; }
beta_after=$(beta_state)
[[ "$beta_before" == "$beta_after" ]] || { echo "fuzz-api: tenant beta's data changed while only acme's key was used" >&2; exit 1; }
if grep -q "panicked" "$work/serve.err"; then
    echo "fuzz-api: stead panicked during the fuzzing:" >&2
    grep -B2 -A10 "panicked" "$work/serve.err" >&2
    exit 1
fi
if [[ $status -ne 0 ]]; then
    echo "fuzz-api: schemathesis found failures (replay with STEAD_FUZZ_SEED=$seed)" >&2
    exit "$status"
fi
echo "fuzz-api: ok"
