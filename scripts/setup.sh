#!/usr/bin/env bash
# Install everything x402-agent needs into this checkout: system libraries (Debian), the Python
# environment (.venv) and the pinned node-side parts of the local world (node_modules).
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_debs=()
for pkg in libusb-1.0-0; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_debs+=("$pkg")
done
# PostgreSQL server binaries: the ledger tests start a private cluster from them (the machine
# image may ship them already).
pg_missing=0
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    need_debs+=(postgresql); pg_missing=1
fi
if ((${#need_debs[@]})); then
    echo "setup: installing Debian packages: ${need_debs[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_debs[@]}" >/dev/null
    if ((pg_missing)); then
        # The package creates and starts a default cluster, which nothing here uses.
        while read -r version cluster _; do
            $SUDO pg_dropcluster --stop "$version" "$cluster" || true
        done < <(pg_lsclusters -h 2>/dev/null || true)
    fi
fi

python=""
for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
        python="$candidate"; break
    fi
done
[ -n "$python" ] || { echo "setup: need Python >=3.11,<3.13" >&2; exit 1; }

stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
    touch "$stamp"
fi

# The SDK's sign-in-with-x extension formats and checks its messages with signinwithethereum,
# whose metadata pins web3<8 and eth-account<0.14 (it runs on ours: tests/test_siwx.py). So it
# is installed without its declared dependencies (abnf is its only one we lack).
siwx_stamp=.venv/.siwx-installed
if [ ! -f "$siwx_stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        "signinwithethereum==5.0.2" "abnf==2.9.1"
    touch "$siwx_stamp"
fi

# langchain-mcp-adapters (a test client of our MCP server) needs mcp<2: its own environment.
adapters_stamp=.venv-adapters/.installed
if [ ! -f "$adapters_stamp" ] || [ tests/adapters-requirements.txt -nt "$adapters_stamp" ]; then
    echo "setup: installing the langchain-mcp-adapters test environment"
    [ -x .venv-adapters/bin/python ] || "$python" -m venv .venv-adapters
    .venv-adapters/bin/python -m pip install -q --disable-pip-version-check \
        -r tests/adapters-requirements.txt
    touch "$adapters_stamp"
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "setup: installing pinned npm packages"
    npm ci --no-audit --no-fund --loglevel=error
fi
echo "setup: ready"
