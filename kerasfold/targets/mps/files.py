"""Tensor files written beside the computing: a thread writes and hashes each file's blocks in
order while the next ones are computed, and each file is synced to disk by other threads while
the export goes on, a large one every SYNC_EVERY bytes as well as when finished (the staging's
final fsync then finds little left to do).

    with TensorFiles() as files:
        info = files.write(path, blocks, shape, dtype)     # info["sha256"]: a future
    # leaving the block: every write, hash and fsync is done, or its error raised
"""
from __future__ import annotations

import hashlib
import os
from collections import deque
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np

MAX_IN_FLIGHT = 2                 # blocks handed to the writing thread, not written yet
SYNC_THREADS = 2                  # fsync releases the GIL; the file system commits several at once
SYNC_EVERY = 8 << 20              # a large file's bytes so far are synced every this many bytes: the
                                  # disk writes them while the rest is computed, not all after it


def _put(f: BinaryIO, digest: Any, data: memoryview) -> None:
    f.write(data)
    digest.update(data)                         # hashlib releases the GIL for large buffers


def _sync_early(fd: int) -> None:
    """Sync what a file holds so far (``fd``: a duplicate, closed here; the file may be closed
    meanwhile by its final sync)."""
    try:
        os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)
    finally:
        os.close(fd)


def _sync(f: BinaryIO) -> None:
    try:
        os.fsync(f.fileno())
    finally:
        f.close()


class TensorFiles:
    def __init__(self) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1)
        self._syncer = ThreadPoolExecutor(max_workers=SYNC_THREADS)
        self._in_flight: deque[Future] = deque()
        self._synced: list[Future] = []
        self._ring = [np.empty(0, np.uint8) for _ in range(MAX_IN_FLIGHT + 1)]
        self._turn = 0

    def memory(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An array to compute the next block given to :meth:`write` into: the MAX_IN_FLIGHT + 1
        buffers in turn, grown when too small. A block is in flight until written, and at most
        MAX_IN_FLIGHT are while the next is computed, so a buffer is free again when its turn
        comes. Fresh memory for every block cost page faults (on a VM, zeroing) each time."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        turn, self._turn = self._turn, (self._turn + 1) % len(self._ring)
        if self._ring[turn].size < nbytes:
            self._ring[turn] = np.empty(nbytes, np.uint8)
        return self._ring[turn][:nbytes].view(dtype).reshape(shape)

    def write(self, path: Path, blocks: Iterable[np.ndarray], shape: tuple[int, ...],
              dtype: np.dtype) -> dict[str, Any]:
        """Write ``blocks`` (C-contiguous arrays, in file order) to ``path``; the manifest's tensor
        info, its ``sha256`` a future. An error while computing the blocks closes the file."""
        f = open(path, "wb")
        digest = hashlib.sha256()
        unsynced = [0]
        try:
            for block in blocks:
                data = memoryview(block).cast("B")
                self._in_flight.append(self._writer.submit(self._put_and_sync, f, digest, data, unsynced))
                while len(self._in_flight) > MAX_IN_FLIGHT:
                    self._in_flight.popleft().result()
        except BaseException:
            futures.wait(self._in_flight)       # nothing writes into f any more
            self._in_flight.clear()
            f.close()
            raise
        return {"file": path.name, "shape": list(shape), "dtype": np.dtype(dtype).name,
                "sha256": self._writer.submit(self._finish, f, digest)}

    def _put_and_sync(self, f: BinaryIO, digest: Any, data: memoryview, unsynced: list[int]) -> None:
        """(The writing thread.) One block written and hashed; every SYNC_EVERY bytes, what the
        file holds so far handed to a sync."""
        _put(f, digest, data)
        unsynced[0] += len(data)
        if unsynced[0] >= SYNC_EVERY:
            unsynced[0] = 0
            f.flush()
            self._synced.append(self._syncer.submit(_sync_early, os.dup(f.fileno())))

    def _finish(self, f: BinaryIO, digest: Any) -> str:
        """(The writing thread.) The file is complete: sync it beside the export; its hash."""
        try:
            f.flush()
        except BaseException:
            f.close()
            raise
        self._synced.append(self._syncer.submit(_sync, f))
        return digest.hexdigest()

    def __enter__(self) -> TensorFiles:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self._writer.shutdown(wait=True)        # every block written, every file handed to a sync
        self._syncer.shutdown(wait=True)
        if kind is None:                        # an fsync's error is reported once: it is the export's
            for done in (*self._in_flight, *self._synced):
                done.result()
