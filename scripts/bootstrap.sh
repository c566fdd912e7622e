#!/usr/bin/env bash
# Set up everything this project needs on Debian 12 / Raspberry Pi OS, then run one thing.
#
#   scripts/bootstrap.sh demo [ARGS]   set up, then `bzgw demo ARGS`
#   scripts/bootstrap.sh test [ARGS]   set up (with test extras), then lint, type-check, pytest ARGS
#   scripts/bootstrap.sh setup         set up only
#
# Idempotent and quiet when everything is already there: OS packages are installed only when
# missing, the venv is created only once, and the package is reinstalled only when
# pyproject.toml changes.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="${BZGW_VENV:-$ROOT/.venv}"
MODE="${1:-setup}"
[ $# -gt 0 ] && shift

say() { printf '\033[1mbootstrap:\033[0m %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

case "$MODE" in
  demo|test|setup) ;;
  -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
  *) die "unknown mode '$MODE' (use demo, test or setup)" ;;
esac

# --- OS packages -----------------------------------------------------------------------------
# mosquitto: broker for the demo and tests; libzbar0: pyzbar; libglib2.0-dev + libdbus-1-dev +
# pkg-config + build tools: bluepy and dbus-python (python-dbusmock) build from source;
# dbus-daemon: the private bus for the mocked BlueZ; faketime: clock tests; chromium: browser
# tests of the status page and dashboard (tests skip where it cannot be installed).
need=(python3-venv python3-dev build-essential pkg-config mosquitto libzbar0 libglib2.0-dev
      libdbus-1-dev dbus-daemon)
[ "$MODE" = test ] && need+=(faketime chromium)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  # python3-venv is only needed when the interpreter cannot make a venv with pip by itself
  if python3 -c 'import ensurepip, venv' 2>/dev/null; then
    missing=("${missing[@]/python3-venv}")
  fi
  # python3-dev/build-essential are moot when a compiler and Python headers already exist
  if command -v gcc >/dev/null && python3 -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")))'; then
    missing=("${missing[@]/python3-dev}"); missing=("${missing[@]/build-essential}")
  fi
  read -r -a missing <<< "${missing[*]}"
else
  say "not a Debian system: install ${need[*]} yourself if something fails below"
fi

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "missing OS packages (${missing[*]}) and no sudo: install them as root"
    SUDO="sudo"
  fi
  say "installing OS packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    # chromium is optional (browser tests skip without it); everything else is required
    required=(); for p in "${missing[@]}"; do [ "$p" = chromium ] || required+=("$p"); done
    [ ${#required[@]} -eq 0 ] || $SUDO apt-get install -y -qq --no-install-recommends "${required[@]}" >/dev/null \
      || die "apt-get could not install: ${required[*]}"
    say "chromium could not be installed: browser tests will be skipped"
  fi
fi

# --- Python environment ----------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed: install python3-venv"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
fi

extras="test"
stamp="$VENV/.bzgw-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)-$extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c 'import bzgw.cli' 2>/dev/null; then
  say "installing bzgw and its dependencies into $VENV"
  # Build chatter (sdist warnings) goes to a log; it is shown only when the install fails.
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" \
       > "$VENV/pip-install.log" 2>&1; then
    tail -n 40 "$VENV/pip-install.log" >&2
    die "pip install failed (full log: $VENV/pip-install.log)"
  fi
  echo "$want" > "$stamp"
fi

export PATH="$VENV/bin:$PATH"
case "$MODE" in
  demo) exec bzgw demo "$@" ;;
  test)
    say "ruff"; ruff check core contract ble qr gateway mqtt matcher bzgw tests bench
    say "mypy"; mypy
    say "pytest"; exec python -m pytest -q "$@" ;;
  setup) say "ready: . $VENV/bin/activate" ;;
esac
