"""The fuzz harness in the tests: 500 seeded mutants (bytes, config, weights of the model file;
the manifest of an export) through both command lines, one forked process per case. Every case
must keep the contract (benchmarks/fuzz.py: no exit 3, no hang, one error line, OUT unchanged,
nothing non-finite written). Longer campaigns: ``python benchmarks/fuzz.py N``."""
import json
import shutil
import subprocess
import sys

from conftest import ROOT
from models.flavours import SUFFIXES
from models.small import mixed

CASES = 500


def test_fuzz_campaign_keeps_the_contract(small_model, tmp_path):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for flavour, suffix in SUFFIXES.items():
        shutil.copyfile(small_model(mixed, flavour=flavour)[1], seeds / ("mixed" + suffix))
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz.py"), str(CASES), "--seed", "1",
                          "--seeds", str(seeds), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    counts = json.loads(run.stdout)
    print(f"fuzz: {counts['cases']} cases in {counts['seconds']} s, exit codes {counts['exit']}")
    assert counts["cases"] == CASES
    assert counts["problems"] == {}, counts["bad_cases"]
    # the mutants reach past the readers: some are refused (2) and some still export (0)
    assert counts["exit"].get("2", 0) > CASES // 4 and counts["exit"].get("0", 0) > CASES // 20
    assert set(counts["by_family"]) == {"bytes", "config", "weights", "manifest"}
