#!/usr/bin/env bash
# CI: screenshots of the real window under Xvfb (fake engine, real files); prints where they are.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${DLADIFF_SCREENSHOTS:-build/screenshots}"
env -u QT_QPA_PLATFORM .venv/bin/python packaging/screenshots.py --out "$out"
