#!/usr/bin/env bash
# OpenAI compatibility suite: the official `openai` and `openai-agents` Python SDKs, unchanged,
# against a real `stead serve` (compat/). Installs the pinned SDKs (compat/requirements.txt) into
# a venv in a cache outside the clone, builds the release binary, installs the reference MCP
# servers (for the MCP tool tests) and runs pytest. Exits non-zero when any test fails.
#
#   bash .ci/compat.sh [extra pytest args, e.g. -k streaming]
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/stead-target}
export CARGO_TERM_COLOR=never

req="$root/compat/requirements.txt"
stamp="$( (python3 --version; cat "$req") | sha256sum | cut -c1-16)"
venv="${STEAD_TOOLS_DIR:-$HOME/.cache/stead-tools}/compat/$stamp"
if [[ ! -f "$venv/.complete" ]]; then
    echo "compat: installing the SDKs into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    # Every transitive dependency is pinned in the file, so --no-deps keeps the set exact.
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req" 1>&2
    "$venv/bin/pip" check 1>&2
    touch "$venv/.complete"
else
    echo "compat: SDKs cached in $venv" >&2
fi

echo "== compat: building stead (release)" >&2
cargo build --release -q -p stead
export STEAD_BIN="$CARGO_TARGET_DIR/release/stead"

echo "== compat: MCP reference servers" >&2
eval "$(bash .ci/mcp-servers.sh)"
export STEAD_REQUIRE_ALL_TESTS=1  # the servers are installed: an MCP test that would skip fails

echo "== compat: pytest" >&2
# No test may reach the network: the agents SDK's tracing is disabled in the tests, and the
# clients only ever talk to the loopback server the fixtures start.
export OPENAI_API_KEY=unused
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the clone
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/compat" "$@"
