"""The export's fast paths keep their promises: the tiled layout copy gives the bytes numpy's own
copy gives, the progress line shows only on a terminal, a plain export starts no BLAS threads."""
import os
import pty
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from kerasfold.progress import ProgressLine, progress_line
from kerasfold.targets.mps import layouts
from kerasfold.targets.mps.strips import contiguous

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("view", [
    lambda: layouts.conv2d_ohwi(RNG.normal(size=(3, 3, 300, 257))),          # float64 fold, odd sizes
    lambda: layouts.conv2d_ohwi(RNG.normal(size=(1, 1, 1024, 125))),
    lambda: layouts.conv2d_ohwi(RNG.normal(size=(5, 2, 3, 16)).astype(np.float32)),
    lambda: layouts.depthwise_ohw(RNG.normal(size=(3, 3, 130, 2))),
    lambda: layouts.transpose_ohwi(RNG.normal(size=(4, 4, 129, 7))),
    lambda: layouts.dense_oi(RNG.normal(size=(700, 300))),
    lambda: RNG.normal(size=(0, 3, 3, 4)).transpose(3, 0, 1, 2),
    lambda: np.float64(2.5) * np.ones(5),
])
@pytest.mark.parametrize("dtype", ["<f4", "<f2"])
def test_tiled_copy_gives_numpys_bytes(view, dtype):
    a = view()
    with np.errstate(over="ignore"):
        want = np.ascontiguousarray(a, dtype=dtype)
        got = contiguous(a, dtype)
    assert got.flags.c_contiguous and got.dtype == np.dtype(dtype) and got.shape == a.shape
    assert got.tobytes() == want.tobytes()


def test_signed_zeros_and_specials_survive():
    a = np.array([[0.0, -0.0, np.inf], [-np.inf, 1e-320, -1e-40]] * 200).T       # (3, 400) view
    assert contiguous(a, "<f4").tobytes() == np.ascontiguousarray(a, dtype="<f4").tobytes()


class FakeTerminal:
    def __init__(self, tty=True):
        self.text, self.tty = "", tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return self.tty


def test_progress_line_waits_then_rewrites_in_place_then_erases():
    term = FakeTerminal()
    line = ProgressLine("kerasfold", term, after=3600)
    line(1, 4, 1_000_000)
    assert term.text == ""                                   # not yet: a fast export shows nothing
    line.after = 0
    line(2, 4, 2_500_000)
    line(4, 4, 9_000_000)
    line.close()
    assert term.text == ("\rkerasfold: layer 2/4, 2.5 MB written\rkerasfold: layer 4/4, 9.0 MB written"
                         "\r\x1b[K")
    assert progress_line("kerasfold", quiet=False, stream=FakeTerminal(tty=False)) is None
    assert progress_line("kerasfold", quiet=True, stream=FakeTerminal()) is None


def _in_a_terminal(args, env):
    """Run the export command with a pseudo-terminal as stdout and stderr; everything it wrote."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "kerasfold.yolo2metal", *map(str, args)], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


def test_progress_line_on_a_terminal_only(tiny_yolo, tmp_path):
    env = {**os.environ, "KERASFOLD_PROGRESS_AFTER": "0"}
    code, text = _in_a_terminal([tiny_yolo["keras2-h5"], tmp_path / "a"], env)
    assert code == 0 and "kerasfold: layer 15/15, 63.4 MB written" in text and "\x1b[K" in text
    assert text.rstrip().splitlines()[-1].split("\x1b[K")[-1].startswith("exported 15 layers")
    code, text = _in_a_terminal([tiny_yolo["keras2-h5"], tmp_path / "b", "-q"], env)
    assert (code, text) == (0, "")
    piped = subprocess.run([sys.executable, "-m", "kerasfold.yolo2metal", tiny_yolo["keras2-h5"], tmp_path / "c"],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stderr == "" and "layer 1/" not in piped.stdout


@pytest.mark.parametrize("verify, threads", [(False, "1"), (True, None)])
def test_plain_export_starts_no_blas_threads(small_export, small_model, tmp_path, verify, threads):
    from models.small import conv_bn_act
    _, path = small_model(conv_bn_act)
    code = ("import os, sys\nfrom kerasfold.yolo2metal import main\n"
            f"assert main([{str(path)!r}, {str(tmp_path / 'o')!r}, '-q'{', ' + repr('--verify') if verify else ''}]) == 0\n"
            "print(os.environ.get('OPENBLAS_NUM_THREADS'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(threads)
