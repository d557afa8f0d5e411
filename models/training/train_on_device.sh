#!/usr/bin/env bash
# Train a starter model on the lent GPU machine in one call, and bring back a shippable file.
#
#   bash models/training/train_on_device.sh CFG RESOLUTION MINUTES
#   e.g. bash models/training/train_on_device.sh stylegan3-t 64 6
#   EXTRA="--turn-fakes=1 --eq-rot 2" adds finetune flags (here: teach a StyleGAN3 to turn with its input)
#
# Draws the toyfaces dataset (rotated variant for StyleGAN3), trains with the project's loop for
# MINUTES (a clean stop with a snapshot), then writes to $OUT: the G_ema network in float16
# (under the 16 MB a file that comes back may have), the run log and the last sample grid.
# Locally, `python models/training/ship_starter.py` is not needed for such a file: it already
# records the dataset, the command and the machine; copy it into models/ and add it to registry.json.
set -euo pipefail
CFG=${1:?cfg: stylegan2 | stylegan3-t}; RES=${2:?resolution}; MINUTES=${3:?minutes}
OUT=${OUT:-/tmp/out}; WORK=${WORK:-/tmp/starter}; mkdir -p "$OUT" "$WORK"
VARIANT=upright; [ "$CFG" != stylegan2 ] && VARIANT=rotated
NAME="toyfaces-${CFG/stylegan/sg}-$RES"; NAME=${NAME/sg3-t/sg3t}
COUNT=${COUNT:-10000}; CBASE=${CBASE:-8192}; CMAX=${CMAX:-256}; BATCH=${BATCH:-32}; DEVICE=${DEVICE:-cuda}
DATA="$WORK/toyfaces-$VARIANT-$RES.zip"
DATASET_CMD="python main.py make-dataset toyfaces --out toyfaces-$VARIANT-$RES.zip --count $COUNT --resolution $RES --variant $VARIANT"
[ -f "$DATA" ] || python3 main.py make-dataset toyfaces --out "$DATA" --count "$COUNT" --resolution "$RES" --variant "$VARIANT"
TRAIN=(finetune --data "$DATA" --outdir "$WORK/$NAME" --cfg "$CFG" --resolution "$RES" --cbase "$CBASE" --cmax "$CMAX"
       --batch "$BATCH" --kimg 1000 --tick 4 --snap 5 --mirror 1 --aug noaug --device "$DEVICE" --seed 0 --minutes "$MINUTES"
       ${EXTRA:-})
# keep the tick lines and the outcome; tqdm's redraws stay out of the log
{ python3 main.py "${TRAIN[@]}" 2>&1 | tr '\r' '\n' | grep -E "s/kimg|stopped|trained to|error|note:" || true; } \
    | tee "$OUT/$NAME.log"
SNAP=$(ls "$WORK/$NAME"/network-snapshot-*[0-9].safetensors | sort | tail -1)
python3 - "$OUT/info.json" "$DATASET_CMD" "python main.py ${TRAIN[*]}" "$RES" "$VARIANT" "$NAME" "$OUT/$NAME.log" "$COUNT" <<'PY'
import json, sys, torch
sys.path.insert(0, "models/training")
from ship_starter import tick_lines, training_seconds
path, dataset_cmd, command, res, variant, name, log = sys.argv[1:8]
json.dump({"dataset": {"name": "toyfaces", "variant": variant, "count": int(sys.argv[8]), "resolution": int(res),
                       "command": dataset_cmd},
           "training_time_s": round(training_seconds(tick_lines(open(log).read()))),
           "machine": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU", "command": command,
           "log": f"models/training/{name}.log"}, open(path, "w"))
PY
python3 main.py convert --network "$SNAP" --output "$OUT/$NAME.safetensors" --keep G_ema --half \
    --training-info "$OUT/info.json"
cp "$(ls "$WORK/$NAME"/fakes*.png | sort | tail -1)" "$OUT/$NAME-fakes.png"
ls -la "$OUT"
