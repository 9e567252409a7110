#!/bin/sh
# Xcode "Run Script" build phase: export the Keras model into the app bundle's weights folder.
#
#   KERASFOLD_MODEL   the Keras file (default: $SRCROOT/Models/yolo.h5)
#   KERASFOLD_OUT     the export folder added to the bundle (default: $SRCROOT/Weights)
#   KERASFOLD_PYTHON  a Python with kerasfold installed (default: python3)
#   KERASFOLD_VERIFY  set to 1 to run the parity check too (needs TensorFlow; slower)
#
# Quiet on success; on failure Xcode shows the one-line error. Exit codes: 0 ok, 1 parity
# failed, 2 bad input, 3 internal error. The export replaces KERASFOLD_OUT atomically, so an
# interrupted build never leaves a half-written weights folder in the bundle.
set -eu
model="${KERASFOLD_MODEL:-${SRCROOT:-.}/Models/yolo.h5}"
out="${KERASFOLD_OUT:-${SRCROOT:-.}/Weights}"
python="${KERASFOLD_PYTHON:-python3}"
if [ "${KERASFOLD_VERIFY:-0}" = "1" ]; then
  exec "$python" -m kerasfold.yolo2metal "$model" "$out" --quiet --verify
fi
exec "$python" -m kerasfold.yolo2metal "$model" "$out" --quiet
