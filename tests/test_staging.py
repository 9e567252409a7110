"""kerasfold.targets.mps.atomic and .stale: what killed or concurrent exports leave beside OUT.

Dead runs' staging directories are removed by the next run (never a live run's, never anything
but OUT's own pattern); SIGTERM cleans up like SIGINT; two runs into an absent OUT both succeed;
OUT may be the current directory."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from kerasfold.errors import ExportError
from kerasfold.pipeline import export
from kerasfold.targets.mps import atomic, out_dir
from kerasfold.targets.mps.atomic import staged_directory
from kerasfold.targets.mps.stale import remove_stale
from models import small

from conftest import ROOT, copy_tree, read_manifest, run_module, snapshot

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A run frozen inside its staging: prints the staging directory, then waits to be killed.
HOLD = """
import sys, time
from pathlib import Path
from kerasfold.targets.mps.atomic import staged_directory
with staged_directory(Path(sys.argv[1])) as stage:
    (stage / "conv_W.bin").write_bytes(bytes(4096))
    print(stage, flush=True)
    time.sleep(60)
"""


def _hold(out):
    """A process holding a staging directory for ``out``: (process, staging directory)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, "the holding process did not start"
    return proc, ROOT / line


def _beside(out):
    return sorted(p.name for p in out.parent.iterdir())


def test_killed_runs_leftovers_removed_by_the_next_run_live_ones_kept(previous, small_model):
    out, before = previous
    _, model = small_model(small.conv_bn_act)
    live, live_stage = _hold(out)
    try:
        held = [_hold(out) for _ in range(3)]                      # all alive: none removes another's
        for proc, _ in held:
            proc.kill()
            assert proc.wait() == -signal.SIGKILL
        assert _beside(out) == sorted(["out", live_stage.name] + [s.name for _, s in held])
        proc = run_module("kerasfold.yolo2metal", model, out, "-q")
        assert proc.returncode == 0, proc.stderr
        assert _beside(out) == sorted(["out", live_stage.name])       # the live run's stage is kept
        assert (live_stage / "conv_W.bin").is_file()
        assert snapshot(out) == before
    finally:
        live.kill()
        live.wait()
    export(model, out)
    assert _beside(out) == ["out"]


def test_only_this_outs_dead_leftovers_are_removed(previous, tmp_path):
    out, before = previous
    dead = [".out.kerasfold-999999-abcd_123", ".out.old-999999-abcdefgh"]
    kept = [".out.kerasfold-abcdefgh",              # an older kerasfold's name: no lock, no pid
            ".other.kerasfold-999999-abcdefgh",     # another OUT's
            ".out.kerasfold-999999-abcdefgh.keep",  # not exactly the pattern
            "out.kerasfold-999999-abcdefgh",
            ".out.kerasfold-2-filename"]            # a file, not a directory
    for name in dead + kept[:-1]:
        (tmp_path / name / "old").mkdir(parents=True)
        (tmp_path / name / "old" / "x.bin").write_bytes(b"x")
    (tmp_path / kept[-1]).write_text("a file")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    (tmp_path / ".out.kerasfold-1-symlinkx").symlink_to(target, target_is_directory=True)
    kept += [".out.kerasfold-1-symlinkx", "elsewhere"]
    assert remove_stale(out) == sorted(dead)
    assert _beside(out) == sorted(kept + ["out"])
    assert (target / "mine.txt").read_text() == "keep"
    assert snapshot(out) == before                     # OUT present: the aside is not given back


def test_dead_fallback_run_gives_out_back(small_export, tmp_path):
    """Killed between moving OUT aside and moving the new export in (the fallback path where the
    platform cannot swap): OUT is absent; the next run puts the previous export back."""
    out = tmp_path / "out"
    aside = tmp_path / ".out.old-999999-abcdefgh"
    aside.mkdir()
    copy_tree(small_export, aside / "old")
    assert remove_stale(out) == [aside.name]
    assert snapshot(out) == snapshot(small_export)
    assert _beside(out) == ["out"]


def test_sigterm_removes_the_staging_directory(previous):
    out, before = previous
    proc, stage = _hold(out)
    assert stage.is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM              # ends by the signal: 143 in a shell
    assert _beside(out) == ["out"]
    assert snapshot(out) == before


def test_sigterm_handler_only_for_the_staging_and_only_in_the_main_thread(tmp_path):
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with staged_directory(tmp_path / "a") as stage:
        (stage / "f").write_bytes(b"1")
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(ValueError):
        with staged_directory(tmp_path / "b"):
            raise ValueError("failed export")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    errors = []

    def in_thread():
        try:
            with staged_directory(tmp_path / "c") as stage:
                (stage / "f").write_bytes(b"2")
        except BaseException as err:                  # noqa: BLE001 - reported below
            errors.append(err)
    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert errors == [] and (tmp_path / "c" / "f").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c"]


@pytest.mark.parametrize("appears", ["export", "foreign"])
def test_out_appearing_during_the_export(small_model, small_export, tmp_path, monkeypatch, appears):
    """Another run creates OUT between this run's check and its rename (simulated): an export there
    is swapped out as usual (the last run wins); anything else is refused with a true message."""
    _, model = small_model(small.conv_bn_act, channels=6)
    out = tmp_path / "out"
    real_rename = os.rename

    def rename(src, dst):
        if str(dst) == str(out) and not out.exists():
            if appears == "export":
                copy_tree(small_export, out)
            else:
                out.mkdir()
                (out / "notes.txt").write_text("mine")
        return real_rename(src, dst)
    monkeypatch.setattr(atomic.os, "rename", rename)
    if appears == "export":
        export(model, out)
        assert read_manifest(out)["layers"][0]["weights"]["shape"][0] == 6
    else:
        with pytest.raises(ExportError, match="refusing to replace"):
            export(model, out)
        assert snapshot(out) == {"notes.txt": b"mine"}
    assert _beside(out) == ["out"]


def test_two_runs_into_an_absent_out_both_succeed(small_model, tmp_path):
    """Real processes (they race only sometimes; the simulated test above always does)."""
    models = [small_model(small.conv_bn_act, channels=c)[1] for c in (6, 8)]
    for round_ in range(2):
        out = tmp_path / f"out{round_}"
        procs = [subprocess.Popen([sys.executable, "-m", "kerasfold.yolo2metal", m, out, "-q"],
                                  cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
                 for m in models]
        for p in procs:
            assert p.wait() == 0, p.stderr.read()
        assert read_manifest(out)["layers"][0]["weights"]["shape"][0] in (6, 8)
        assert _beside(out) == [f"out{r}" for r in range(round_ + 1)]


@pytest.mark.parametrize("cwd_holds", ["nothing", "a previous export"])
def test_out_is_the_current_directory(small_model, small_export, tmp_path, cwd_holds):
    _, model = small_model(small.conv_bn_act, channels=6)
    here = tmp_path / "here"
    if cwd_holds == "nothing":
        here.mkdir()
    else:
        copy_tree(small_export, here)
    proc = subprocess.run([sys.executable, "-m", "kerasfold.yolo2metal", model, ".", "-q"], cwd=here,
                          env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert read_manifest(here)["layers"][0]["weights"]["shape"][0] == 6
    assert sorted(p.name for p in here.iterdir()) == ["conv_W.bin", "conv_b.bin", "head_W.bin",
                                                       "head_b.bin", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


@pytest.mark.parametrize("change", ["user_file", "foreign_manifest", "touched_manifest"])
def test_out_changed_after_its_check_is_checked_again_at_the_swap(small_model, small_export, tmp_path, change,
                                                                  monkeypatch):
    """OUT is checked (its manifest validated) beside the writing, in a child process; a change
    made after that check, while the files are written, is seen at the swap: refused, or checked
    and replaced."""
    _, model = small_model(small.conv_bn_act, channels=6)
    out = copy_tree(small_export, tmp_path / "out")
    checked = tmp_path.parent / f"{tmp_path.name}-checked"     # a file: the check runs in another process
    real_check = out_dir.check_out_dir

    def check_out_dir(*args, **kwargs):
        seen = real_check(*args, **kwargs)
        if kwargs.get("validate", True):       # the check beside (the quick one says validate=False)
            checked.write_text("passed")
        return seen
    monkeypatch.setattr(out_dir, "check_out_dir", check_out_dir)

    def progress(done, total, _written):
        if done == total:
            deadline = time.monotonic() + 30    # the check beside has passed: now OUT changes
            while not checked.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert checked.exists()
            if change == "user_file":
                (out / "notes.txt").write_text("mine")
            elif change == "foreign_manifest":
                (out / "manifest.json").write_text('{"name": "my app"}')
            else:
                os.utime(out / "manifest.json", ns=(1, 1))
    if change == "touched_manifest":
        export(model, out, progress=progress)
        assert read_manifest(out)["layers"][0]["weights"]["shape"][0] == 6
    else:
        with pytest.raises(ExportError, match="refusing to replace"):
            export(model, out, progress=progress)
        assert ("notes.txt" in snapshot(out)) == (change == "user_file")
        assert read_manifest(out) if change == "user_file" else b"my app" in snapshot(out)["manifest.json"]
    assert _beside(out) == ["out"]


def test_out_a_symbolic_link_loop_is_one_line_and_exit_2(small_model, tmp_path):
    _, model = small_model(small.conv_bn_act, channels=6)
    out = tmp_path / "out"
    out.symlink_to(out)
    proc = run_module("kerasfold.yolo2metal", model, out)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"kerasfold: error: {out}: expected OUT to be a directory or a link to one, "
                           "received a symbolic link that does not resolve (a loop)\n")
    assert _beside(out) == ["out"] and out.is_symlink()


@pytest.mark.skipif(not (sys.platform.startswith("linux") or sys.platform == "darwin"),
                    reason="the atomic exchange is Linux's renameat2 or macOS' renamex_np")
def test_the_exchange_swaps_without_a_subprocess(tmp_path, monkeypatch):
    """The swap finds the C library in this process (ctypes.util.find_library ran ldconfig -p)."""
    def no_subprocess(*args, **kwargs):
        raise AssertionError("a subprocess was started")
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").write_text("a")
    (b / "from_b").write_text("b")
    assert atomic.exchange(a, b)
    assert os.listdir(a) == ["from_b"] and os.listdir(b) == ["from_a"]
