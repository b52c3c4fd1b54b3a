#!/usr/bin/env bash
# Build the one-folder desktop bundle into dist/dladiff-app and prove it works frozen:
#   0. the licence texts (LICENSE, THIRD_PARTY.md, resources/licenses/) are inside it,
#   1. `dladiff-app --self-test` (the window opens offscreen and closes),
#   2. one zero-shot protection of a sample photo through the frozen command line `dladiff`
#      (offline dlib models bundled from face_recognition_models), checked on the written file.
# Prints the bundle's size and the build time. CI (.ci/run) runs it; so can you.
# DLADIFF_BUNDLE_STEPS sets the zero-shot steps of the check (default 10: it proves the frozen
# engine runs, the protection's strength is measured by the benchmarks, not here).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 dev.py test --co -q >/dev/null   # makes sure .venv exists with the app installed
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[packaging]"

start=$(date +%s)
(cd packaging && ../.venv/bin/pyinstaller --noconfirm --log-level WARN --distpath ../dist \
  --workpath ../build/pyinstaller dladiff.spec)
build_s=$(( $(date +%s) - start ))
bundle=dist/dladiff-app

echo "== licence texts in the bundle"
# PyInstaller puts data files into the bundle's contents folder (_internal since PyInstaller 6).
contents="$bundle/_internal"
[ -d "$contents" ] || contents="$bundle"
for required in sface-yunet-Apache-2.0.txt edgeface-BSD-3-Clause.txt dlib-models-CC0-1.0.txt; do
  [ -f "resources/licenses/$required" ] || { echo "resources/licenses/$required is missing"; exit 1; }
done
for text in LICENSE THIRD_PARTY.md resources/licenses/*; do
  cmp -s "$text" "$contents/$text" || { echo "the bundle lacks $text (or holds another copy)"; exit 1; }
done
echo "LICENSE, THIRD_PARTY.md and $(ls resources/licenses | wc -l) licence texts are in the bundle"

echo "== frozen app: --self-test"
QT_QPA_PLATFORM=offscreen "$bundle/dladiff-app" --self-test

echo "== frozen CLI: zero-shot protection of a sample photo"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/in"
.venv/bin/python - "$work/in/astronaut.png" <<'PY'
import sys

from PIL import Image
from skimage import data

Image.fromarray(data.astronaut()).save(sys.argv[1])
PY
# A fresh cache and config: the check must not depend on anything this machine downloaded.
DLADIFF_CACHE_DIR="$work/cache" DLADIFF_CONFIG_DIR="$work/config" OMP_NUM_THREADS=1 \
  "$bundle/dladiff" protect "$work/in" -o "$work/out" --layers zeroshot --preset medium \
  --layer2-steps "${DLADIFF_BUNDLE_STEPS:-10}"
.venv/bin/python - "$work/out" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
(protected,) = out.rglob("astronaut-protected.png")
(manifest,) = out.rglob("manifest.json")
photo = json.loads(manifest.read_text())["photos"][0]
assert "layer2" in photo["layers_done"], photo["layers_done"]
assert photo["linf"] and photo["linf"] > 0, "the frozen engine did not change the photo"
scores = [s for s in photo["scores"] if s["value"] is not None]
assert scores, "no identity score was measured by the frozen engine"
# The offline models bundled as package data are found frozen, not only in a checkout.
missing = {"dlib", "sface", "edgeface"} - {s["encoder"] for s in scores}
assert not missing, f"the frozen engine did not use {sorted(missing)}"
print(f"frozen CLI protected {protected.name}: "
      + ", ".join(f"{s['encoder']} {s['verdict']} ({s['value']:.3f})" for s in scores))
PY

size=$(du -sh "$bundle" | cut -f1)
echo "bundle: $bundle ($size), built in ${build_s} s"
