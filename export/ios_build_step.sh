#!/bin/sh
# Xcode "Run Script" build phase: export a Keras model to Metal weight files (kerasfold).
#
# Add it to the app target as:   /bin/sh "$SRCROOT/export/ios_build_step.sh"
# with export/kerasfold-inputs.xcfilelist and export/kerasfold-outputs.xcfilelist as its input and
# output file lists, and "Based on dependency analysis" ticked. README.md, "Xcode build phase".
#
#   model   SCRIPT_INPUT_FILE_0 (or the input file list), else KERASFOLD_MODEL, else $SRCROOT/Models/yolo.h5
#   OUT     SCRIPT_OUTPUT_FILE_0 (OUT or OUT/manifest.json, or the output file list), else
#           KERASFOLD_OUT, else $SRCROOT/Weights
#   KERASFOLD_PYTHON          a Python with kerasfold installed (default: python3)
#   KERASFOLD_ARGS            export options, as on the command line: "--dtype float16"
#   KERASFOLD_VERIFY=1        run the parity check too (CI builds; needs TensorFlow)
#   KERASFOLD_COPY_TO_BUNDLE=1  copy OUT into $TARGET_BUILD_DIR/$UNLOCALIZED_RESOURCES_FOLDER_PATH
#
# An unchanged model, kerasfold version and options, with OUT as the last export left it: nothing is
# written (a stamp in $DERIVED_FILE_DIR remembers the model's size, mtime and sha256). Diagnostics are
# "PATH: error: ..." / "PATH: warning: ..." lines for Xcode's issue navigator. Exit codes: 0 ok,
# 1 parity check failed, 2 bad input, 3 internal error; OUT is kept as it was on any failure.
set -u
python="${KERASFOLD_PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "$0: error: expected KERASFOLD_PYTHON to name a Python with kerasfold installed, received '$python', which is not a command" >&2
  exit 2
fi
# -B: no bytecode written next to kerasfold's sources (the sandbox allows no undeclared writes).
# The Python says "kerasfold" on descriptor 3 first, so that a KERASFOLD_PYTHON that is not one
# (/usr/bin/true, a Python 2) is an error, not a build that silently exported nothing.
code='import os, sys
os.write(3, b"kerasfold")
os.close(3)
try:
    from kerasfold.xcode.phase import main
except ImportError as err:
    print(f"{sys.argv[1]}: error: expected a Python with kerasfold installed (KERASFOLD_PYTHON), "
          f"received {sys.executable}, which cannot import it ({err})", file=sys.stderr)
    sys.exit(2)
sys.exit(main())'
{ said=$("$python" -B -c "$code" "$0" 3>&1 1>&4 4>&-); status=$?; } 4>&1
if [ "$said" != "kerasfold" ]; then
  echo "$0: error: expected KERASFOLD_PYTHON to name a Python 3 with kerasfold installed, received '$python' (exit status $status)" >&2
  exit 2
fi
exit "$status"
