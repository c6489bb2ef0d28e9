"""benchmarks/README.md lists every benchmark script, and each listed script exists."""

import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_every_benchmark_script_is_listed_with_what_it_writes():
    text = (BENCH / "README.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9_]+\.py)` \|", text, flags=re.M))
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert scripts - listed == set(), "add these scripts to benchmarks/README.md"
    assert listed - scripts == set(), "these listed scripts are gone"
