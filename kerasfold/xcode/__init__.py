"""The Xcode Run Script phase: ``export/ios_build_step.sh`` runs ``python -m kerasfold.xcode``.

    settings  where the model, OUT, the stamp and the bundle copy are, from Xcode's environment
    stamp     "up to date" without numpy or h5py: the model's size, mtime and sha256, OUT's files
    phase     the phase itself: nothing when up to date, else export (and verify, copy), with
              diagnostics as ``PATH: error: message`` lines Xcode's issue navigator shows

The up-to-date path imports the standard library only (json, hashlib, os); numpy, h5py and
TensorFlow are imported when there is work to do.
"""
