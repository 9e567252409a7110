"""Work beside the export (kerasfold.forked): a forked child when no other thread runs, else a
thread; the child's answer is its value or its ExportError, and anything else is done again here.
The OUT check of an export over a previous one runs that way; the commands leave without
Python's teardown (kerasfold.cli.leave)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from kerasfold import forked
from kerasfold.errors import ConfigError, ExportError
from models import small

from conftest import ROOT, copy_tree

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


def test_work_runs_in_a_child_only_when_no_other_thread_runs():
    proc = _python("""
        import os, threading
        from kerasfold.forked import beside
        alone = beside(os.getpid).result()
        stop = threading.Event()
        other = threading.Thread(target=stop.wait)
        other.start()
        with_thread = beside(os.getpid).result()
        stop.set(); other.join()
        print(alone != os.getpid(), with_thread == os.getpid())
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


def _raise_config_error() -> None:
    raise ConfigError("expected a thing, received another", file="model.h5", layer="conv")


def _pid_or_die(parent: int) -> int:
    if os.getpid() != parent:
        os._exit(7)                                    # the child dies without answering
    return parent


def _value_error(parent: int) -> None:
    raise ValueError(f"raised in {'the child' if os.getpid() != parent else 'the parent'}")


def _sleep() -> None:
    time.sleep(60)


@pytest.fixture
def single_threaded(monkeypatch):
    """The child path, whatever threads the test session runs (they do not touch what is forked)."""
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    monkeypatch.setattr(forked, "can_fork", lambda: True)


def test_an_export_error_in_the_child_is_raised_here_with_its_fields(single_threaded):
    pending = forked.beside(_raise_config_error)
    with pytest.raises(ConfigError) as caught:
        pending.result()
    assert (caught.value.message, caught.value.file, caught.value.layer) == \
        ("expected a thing, received another", "model.h5", "conv")
    assert str(caught.value) == "model.h5: layer 'conv': expected a thing, received another"


def test_a_child_that_dies_has_its_work_done_here(single_threaded):
    assert forked.beside(_pid_or_die, os.getpid()).result() == os.getpid()


def test_a_bug_in_the_child_is_raised_here_as_itself(single_threaded):
    with pytest.raises(ValueError, match="raised in the parent"):        # the trace is this process's
        forked.beside(_value_error, os.getpid()).result()


def test_cancel_kills_and_reaps_a_running_child(single_threaded):
    pending = forked.beside(_sleep)
    pid = pending._pid
    start = time.monotonic()
    pending.cancel()
    assert time.monotonic() - start < 5
    with pytest.raises(ChildProcessError):             # reaped: no zombie left
        os.waitpid(pid, os.WNOHANG)
    pending.cancel()                                    # twice: harmless


def test_the_child_runs_at_a_lower_priority(single_threaded):
    assert forked.beside(os.nice, 0).result() >= os.nice(0) + min(forked.NICE, 19 - os.nice(0))


def test_work_done_now_raises_its_error_when_asked():
    pending = forked.now(_raise_config_error)           # nothing raised yet
    with pytest.raises(ConfigError):
        pending.result()


def test_out_check_over_a_previous_export_runs_in_a_child(small_model, small_export, tmp_path):
    """An export over a previous OUT validates its manifest in another process (the GIL is the
    writing's); into a new OUT nothing is forked."""
    _, model = small_model(small.conv_bn_act, channels=6)
    out = copy_tree(small_export, tmp_path / "out")
    proc = _python("""
        import os, sys
        from pathlib import Path
        from kerasfold.pipeline import export
        from kerasfold.targets.mps import out_dir
        real = out_dir.check_out_dir
        def check(out, validate=True):
            if validate:
                Path(sys.argv[3]).write_text(str(os.getpid()))
            return real(out, validate)
        out_dir.check_out_dir = check
        export(sys.argv[1], sys.argv[2])
        print(Path(sys.argv[3]).read_text() != str(os.getpid()))
        Path(sys.argv[3]).unlink()
        export(sys.argv[1], sys.argv[2] + "-new")
        print(Path(sys.argv[3]).read_text() == str(os.getpid()))
    """, model, str(out), str(tmp_path / "checked-by"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


def test_leave_runs_atexit_flushes_and_exits_with_the_code():
    proc = _python("""
        import atexit, sys
        from kerasfold.cli import leave
        atexit.register(lambda: print("atexit ran"))
        print("result", end=" ")
        sys.stderr.write("a warning")
        leave(3)
        print("never")
    """)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "result atexit ran\n", "a warning")


def test_a_command_exits_with_its_code_and_output(small_model, tmp_path):
    _, model = small_model(small.conv_bn_act, channels=6)
    ok = subprocess.run([sys.executable, "-m", "kerasfold", model, str(tmp_path / "out")], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("exported ") and ok.stdout.endswith("\n"), ok.stderr
    bad = subprocess.run([sys.executable, "-m", "kerasfold.yolo2metal", str(tmp_path / "none.h5"),
                          str(tmp_path / "out2")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1


def test_the_command_starts_outs_check_and_the_hash_before_numpy_is_imported(small_model, small_export,
                                                                             tmp_path):
    """The command line forks OUT's check and the model's hash first: they run on the other core
    while numpy and h5py are imported here."""
    _, model = small_model(small.conv_bn_act, channels=6)
    out = copy_tree(small_export, tmp_path / "out")
    proc = _python("""
        import sys
        from kerasfold import yolo2metal
        from kerasfold.targets.mps import out_dir
        seen = []
        real = out_dir.beside
        def beside(fn, *args):
            seen.append(f"{fn.__name__}:{'numpy' in sys.modules}")
            return real(fn, *args)
        out_dir.beside = yolo2metal.beside = beside
        code = yolo2metal.main([sys.argv[1], sys.argv[2], "-q"])
        print(code, *seen)
    """, model, str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "check_out_dir:False", "file_sha256:False"]


def test_a_command_whose_stdout_is_closed_exits_120_quietly_its_export_done(small_model, tmp_path):
    """``kerasfold … | head -c0``: the summary cannot be printed; no trace, exit 120 as Python's own."""
    _, model = small_model(small.conv_bn_act, channels=6)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "kerasfold.yolo2metal", model, str(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                                 # the reader is gone before the summary
    err = proc.stderr.read()
    assert (proc.wait(timeout=120), err) == (120, b"")
    assert (out / "manifest.json").is_file()
