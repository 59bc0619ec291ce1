#!/usr/bin/env bash
# Create (once) the project-local venv at <repo>/.venv and install the Python
# packages named as arguments, skipping those that are already importable.
#
#   bash scripts/venv.sh torch          # then use .venv/bin/python
#   source scripts/venv.sh torch        # also exports VENV, puts .venv/bin first on PATH
#
# Only PyPI is assumed to be reachable: `pip install torch` gets the default PyPI
# wheel (~80 s, ~5 GB on disk), which is all the gloo benchmark needs.
# Arguments are plain package names: the import name is the name with '-' -> '_'.
_venv_sh_opts=$(set +o)  # restored at the end when sourced
set -euo pipefail

VENV="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

for pkg in "$@"; do
    if ! "$VENV/bin/python" -c "import ${pkg//-/_}" 2>/dev/null; then
        echo "venv.sh: installing $pkg" >&2
        "$VENV/bin/python" -m pip install --quiet "$pkg"
    fi
done

echo "venv: $VENV" >&2
export VENV
export PATH="$VENV/bin:$PATH"
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    eval "$_venv_sh_opts"
fi
unset _venv_sh_opts
