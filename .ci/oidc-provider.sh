#!/usr/bin/env bash
# Installs the OpenID provider the identity tests run against — `oidc-provider-mock` from
# PyPI, a provider this project did not write — into a cache outside the repo, and prints the
# variable the tests read:
#
#   eval "$(bash .ci/oidc-provider.sh)"
#
#   STEAD_OIDC_PROVIDER  the `oidc-provider-mock` executable (run with `--port N`)
#
# Versions are pinned by .ci/oidc-provider/requirements.txt (every package, installed with
# --no-deps); an install is redone only when that file changes. Progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
req="$here/oidc-provider/requirements.txt"
cache="${STEAD_TOOLS_DIR:-$HOME/.cache/stead-tools}/oidc-provider"
dir="$cache/$(sha256sum "$req" | cut -c1-16)"
if [[ ! -f "$dir/.complete" ]]; then
    echo "oidc-provider: installing into $dir" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req" 1>&2
    touch "$dir/.complete"
else
    echo "oidc-provider: cached in $dir" >&2
fi
[[ -x "$dir/bin/oidc-provider-mock" ]] || { echo "oidc-provider: missing $dir/bin/oidc-provider-mock" >&2; exit 1; }
echo "export STEAD_OIDC_PROVIDER='$dir/bin/oidc-provider-mock'"
