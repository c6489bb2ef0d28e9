"""The README's Python examples run as written (from a scratch directory)."""

import os
import re
from pathlib import Path

import pytest

import vitprune

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, tmp_path, monkeypatch):
    if "fashion-mnist" in code and not FMNIST.exists():
        pytest.skip("needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    # the examples name the shipped baseline by its path in the repository
    (tmp_path / "vitprune").mkdir()
    os.symlink(Path(vitprune.__file__).parent / "assets", tmp_path / "vitprune" / "assets")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_readme_has_examples():
    assert len(BLOCKS) >= 2
