#!/usr/bin/env bash
# Installs the reference MCP servers that crates/mcp's tests run against — servers this project
# did not write — into a cache outside the repo, and prints the variables the tests read:
#
#   eval "$(bash .ci/mcp-servers.sh)"
#
#   STEAD_MCP_EVERYTHING  entry point of @modelcontextprotocol/server-everything (npm; run with
#                         `node <entry> stdio|streamableHttp`; TypeScript SDK, protocol 2025-11-25)
#   STEAD_MCP_TIME        the `mcp-server-time` executable (PyPI; Python SDK 2.x, which also
#                         speaks the sessionless 2026-07-28 revision); its venv's python runs it
#                         over streamable HTTP
#
# Versions are pinned by .ci/mcp-servers/package-lock.json and requirements.txt; an install is
# redone only when those files change. Progress goes to stderr, the exports to stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
spec="$here/mcp-servers"
cache="${STEAD_TOOLS_DIR:-$HOME/.cache/stead-tools}/mcp-servers"
stamp_of() { cat "$spec/package.json" "$spec/package-lock.json" "$spec/requirements.txt" | sha256sum | cut -c1-16; }
stamp="$(stamp_of)"
dir="$cache/$stamp"

if [[ ! -f "$dir/.complete" ]]; then
    echo "mcp-servers: installing into $dir" >&2
    rm -rf "$dir"
    mkdir -p "$dir/npm"
    cp "$spec/package.json" "$spec/package-lock.json" "$dir/npm/"
    (cd "$dir/npm" && npm ci --ignore-scripts --no-audit --no-fund 1>&2)
    python3 -m venv "$dir/py"
    "$dir/py/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$spec/requirements.txt" 1>&2
    touch "$dir/.complete"
else
    echo "mcp-servers: cached in $dir" >&2
fi

everything="$dir/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
time_server="$dir/py/bin/mcp-server-time"
for f in "$everything" "$time_server"; do
    [[ -e "$f" ]] || { echo "mcp-servers: missing $f after install" >&2; exit 1; }
done
echo "export STEAD_MCP_EVERYTHING='$everything'"
echo "export STEAD_MCP_TIME='$time_server'"
