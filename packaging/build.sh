#!/usr/bin/env bash
# Build the one-folder desktop bundle into dist/dladiff-app and prove it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 dev.py test --co -q >/dev/null   # makes sure .venv exists with the app installed
.venv/bin/pip install -q -e ".[packaging]"
(cd packaging && ../.venv/bin/pyinstaller --noconfirm --distpath ../dist --workpath ../build dladiff.spec)
QT_QPA_PLATFORM=offscreen dist/dladiff-app/dladiff-app --self-test
echo "bundle: dist/dladiff-app ($(du -sh dist/dladiff-app | cut -f1))"
