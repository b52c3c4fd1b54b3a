#!/usr/bin/env bash
# CI: screenshots of the real window under Xvfb; prints where they are. Installs the X server
# packages it needs on Debian/Ubuntu when run as root (a fresh CI machine has none of them).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v Xvfb >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 \
      libxcb-cursor0 >/dev/null
  else
    echo "Xvfb is missing and cannot be installed here (need root + apt-get)." >&2
    exit 1
  fi
fi
out="${DLADIFF_SCREENSHOTS:-build/screenshots}"
env -u QT_QPA_PLATFORM .venv/bin/python packaging/screenshots.py --out "$out" "$@"
