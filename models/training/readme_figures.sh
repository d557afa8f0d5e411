#!/usr/bin/env bash
# The README's pictures of a bundled model, made with the CLI only:
#   bash models/training/readme_figures.sh models/toyfaces-sg2-64.safetensors toyfaces-sg2-64
# writes resources/readme/PREFIX-grid.png (seeds 0-15 at psi 0.7, 4x4), PREFIX-mix-coarse.png and
# PREFIX-mix-fine.png (style mixing: rows take the columns' coarse or fine styles) and, for a
# StyleGAN3 network, PREFIX-rotation.gif (one full turn).
set -euo pipefail
NET=${1:?network file}; PREFIX=${2:?name prefix}
ROOT=$(cd "$(dirname "$0")/../.." && pwd); DEST="$ROOT/resources/readme"; TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$DEST"
cd "$ROOT"
python main.py generate --network "$NET" --seeds 0-15 --trunc 0.7 --grid --outdir "$TMP/grid" --device cpu
cp "$TMP/grid/grid.png" "$DEST/$PREFIX-grid.png"
for group in coarse fine; do
  python main.py mix --network "$NET" --rows 0-3 --cols 4-7 --styles "$group" --trunc 0.7 --outdir "$TMP/$group" \
      --device cpu
  cp "$TMP/$group/grid.png" "$DEST/$PREFIX-mix-$group.png"
done
if python main.py info --network "$NET" | grep -q "StyleGAN3"; then
  python main.py video --network "$NET" --seeds 0 --trunc 0.7 --turns 1 --frames 72 --fps 24 --size 128 \
      --output "$DEST/$PREFIX-rotation.gif" --device cpu
fi
ls -la "$DEST" | grep "$PREFIX"
