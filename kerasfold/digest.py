"""A file's sha256, read in 1 MiB blocks (standard library only: the build phase's up-to-date
check uses it without importing numpy or h5py; hashlib releases the GIL, so a worker thread can
hash while the main thread reads the model)."""
from __future__ import annotations

from pathlib import Path

BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    import hashlib                  # here: the command line forks the hashing before it (~5-10 ms)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
