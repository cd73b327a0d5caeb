#!/usr/bin/env bash
# One entry point for people and CI: set up everything, then run ztdns or the test suite.
#   scripts/dev.sh serve [ARGS...]   install, then `ztdns serve` (built-in default config unless ARGS say otherwise)
#   scripts/dev.sh test  [PYTEST ARGS...]  install, then ruff, mypy --strict and pytest
#   scripts/dev.sh setup             install only
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venv="${ZTDNS_VENV:-$here/.venv}"

# Debian packages the tests and benchmarks drive as real peers and clients; gcc and python3-dev build the UDP lane's
# batching extension (src/ztdns/transport/_udpbatch.c; without them the lane runs its pure-Python fallback) and the
# query log's and dnstap's record maker (src/ztdns/observe/_lines.c; without it records are made in Python).
debian_packages=(python3-venv gcc python3-dev knot-dnsutils bind9-dnsutils dnsperf unbound nftables iproute2 knot softhsm2
                 ldnsutils bind9-utils conntrack knot-dnssecutils curl openssl procps
                 nats-server redis-server rsyslog rsyslog-openssl swtpm swtpm-tools tpm2-tools iodine dns2tcp dnstap-ldns fstrm-bin
                 prometheus chromium chromium-driver faketime nghttp2-client)

need_apt() {
    local missing=()
    for pkg in "${debian_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "dev.sh: missing Debian packages (${missing[*]}); run as root or install them; tests needing them skip" >&2
        return 0
    fi
    echo "dev.sh: apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The unbound/knot packages would start system daemons on port 53 where an init system runs; we start our own.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
}

# setup LOCK: requirements.lock (what `serve` runs on) or requirements-dev.lock (that plus the test tools).
setup() {
    local lock=${1:-requirements-dev.lock}
    need_apt
    local py="${PYTHON:-}"
    if [ -z "$py" ]; then
        # Debian's own interpreter first (what the README promises, and built with PGO and LTO: ~8 % less CPU per
        # cold recursion than a plain source build such as pyenv's), then whatever python3.11 or python3 is on PATH.
        for candidate in /usr/bin/python3.11 python3.11 python3; do
            if command -v "$candidate" >/dev/null; then py=$candidate; break; fi
        done
    fi
    # A venv built from the dev lock holds everything the runtime lock does: `serve` keeps it (up to date) rather
    # than rebuilding it smaller.
    if [ -e "$venv/.ztdns-dev" ]; then lock=requirements-dev.lock; fi
    locked_venv "$py" "$venv" "$lock" pyproject.toml
    if [ "$lock" = requirements-dev.lock ]; then touch "$venv/.ztdns-dev"; fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    # sslyze (the TLS scan test) needs cryptography < 47 and ztdns pins a newer one, so it gets a venv of its own
    # with its own hash lock (docs/transports.md).
    locked_venv "$py" "$here/.venv-sslyze" tools/sslyze/requirements.lock
}

# locked_venv PYTHON DIR LOCK [FILE...]: DIR holds exactly LOCK's hash-pinned packages; rebuilt only when LOCK
# (or another FILE the install depends on) or the interpreter changes, which a stamp file named by their hash records.
locked_venv() {
    local py=$1 dir=$2 lock=$3
    shift 2
    local stamp
    stamp="$dir/.ztdns-lock-$( (sha256sum "$@"; "$py" -c 'import sys; print(sys.executable, sys.version)') | sha256sum | cut -c1-16)"
    [ -e "$stamp" ] && return 0
    rm -rf "$dir"
    "$py" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r "$lock"
    touch "$stamp"
}

# sbom: the CycloneDX SBOM of the runtime lock (every locked package with its version and hashes) to
# build/sbom.cdx.json, and into the package (src/ztdns/data/, not in git) so that a wheel built now ships it and
# the code measurement covers it (docs/attestation.md). Reproducible: no timestamp or serial number.
sbom() {
    mkdir -p build src/ztdns/data
    PYTHONWARNINGS=ignore::UserWarning cyclonedx-py requirements --pyproject pyproject.toml --output-reproducible \
        -o build/sbom.cdx.json requirements.lock
    cp build/sbom.cdx.json src/ztdns/data/sbom.cdx.json
}

cmd="${1:-serve}"
shift || true
case "$cmd" in
    setup) setup ;;
    serve) setup requirements.lock; exec "$venv/bin/ztdns" serve "$@" ;;
    test)
        setup requirements-dev.lock
        export PATH="$venv/bin:$PATH"
        # One command per line: under `set -e` a failure inside an && list would not stop the script.
        echo "== ruff"
        ruff check src tests bench
        ruff format --check src tests bench
        echo "== mypy --strict"
        mypy
        echo "== import layers (pyproject.toml [tool.importlinter], docs/architecture.md)"
        lint-imports
        echo "== sbom (build/sbom.cdx.json)"
        sbom
        # Two workers (pytest-xdist): most tests wait on peers they started, so two share a 2-core machine well;
        # a module (or class) runs whole on one worker, in order, sharing its fixtures. ZTDNS_TEST_WORKERS=0 runs serially.
        workers=${ZTDNS_TEST_WORKERS:-2}
        echo "== pytest (with line coverage of src/ztdns; $workers workers)"
        exec pytest --cov=ztdns --cov-report=term -n "$workers" --dist loadscope "$@"
        ;;
    *) echo "usage: scripts/dev.sh serve|test|setup [ARGS...]" >&2; exit 2 ;;
esac
