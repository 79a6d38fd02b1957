#!/usr/bin/env bash
# Sets up everything the project needs on a fresh Debian machine, idempotently:
# system packages (GDAL), a virtual environment at .venv, GDAL's Python bindings built against
# the system library, and the project itself with its extras. Re-running is cheap: each step
# is skipped when what it makes is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=()
# libpython3.11-testsuite: CPython's own concurrent.futures tests, which
# tests/test_cpython_futures.py runs against BatchExecutor.
for pkg in gdal-bin libgdal-dev python3-venv python3-dev gcc g++ libpython3.11-testsuite; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY="$root/.venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$VPY" -c "from osgeo import gdal_array" >/dev/null 2>&1; then
  echo "bootstrap: building GDAL $(gdal-config --version) Python bindings (about a minute)"
  "$VPY" -m pip install -q numpy setuptools wheel
  "$VPY" -m pip install -q --no-build-isolation "gdal==$(gdal-config --version)"
fi

stamp=.venv/.batchexec-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing batchexec with extras gpu, gdal, emulator, dev"
  "$VPY" -m pip install -q -e ".[gpu,gdal,emulator,dev]"
  touch "$stamp"
fi

# checkov (the template's security lint) pins older boto3/networkx/packaging than the project
# uses, so it gets a virtual environment of its own; its version range is setup.cfg's
# "checkov" extra.
ckstamp=.venv/checkov/.installed
if [ ! -f "$ckstamp" ] || [ setup.cfg -nt "$ckstamp" ]; then
  requirement=$("$VPY" - <<'PY'
import configparser
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
print(" ".join(cfg["options.extras_require"]["checkov"].split()))
PY
)
  echo "bootstrap: installing $requirement into .venv/checkov"
  [ -x .venv/checkov/bin/python ] || "$VPY" -m venv .venv/checkov
  .venv/checkov/bin/python -m pip install -q $requirement
  touch "$ckstamp"
fi
