#!/usr/bin/env bash
# CI step: start the real app under Xvfb with sample photos, run a protection and save
# screenshots (main window, viewer). Installs the X server packages it needs (Debian/Ubuntu).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v Xvfb >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 \
      libxcb-cursor0 libxkbcommon-x11-0 libxcb-xkb1 libxcb-render-util0 libxcb-image0 \
      libxcb-shape0 >/dev/null
  else
    echo "Xvfb is not installed and cannot be installed here: screenshots skipped" >&2
    exit 0
  fi
fi
out="${SCREENSHOT_DIR:-$PWD/artifacts/screenshots}"
mkdir -p "$out"
env -u QT_QPA_PLATFORM .venv/bin/python packaging/screenshots.py --out "$out"
echo "Screenshots are in $out:"
ls -l "$out"
