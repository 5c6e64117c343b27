"""Export's bad-input handling: unknown format, existing output, unexportable op, atomic writes,
missing optional dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.cli import main as cli_main
from qcompile.testing.models import mlp

pytest.importorskip("onnx", reason="export tests need `pip install qcompile[export]`")
pytest.importorskip("onnxruntime", reason="export tests need `pip install qcompile[export]`")


class PooledNet(nn.Module):
    """Conv → MaxPool → Linear: max pooling has no ONNX translation in the exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(36, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(self.pool(self.conv(x)).flatten(1)))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_unknown_format_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid formats: onnx, mlir"):
        qcompile.export(mlp(), torch.randn(4, 16), tmp_path / "x", format="tflite")
    assert _leftovers(tmp_path) == []


def test_existing_directory_refused_then_replaced_atomically(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        qcompile.export(mlp(), torch.randn(4, 16), out)
    # A failure while writing leaves the old directory untouched and no temporary directory.
    import qcompile.exporters.onnx_model as export_onnx

    def broken_check(path: str) -> None:
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(export_onnx, "check_model", broken_check)
    with pytest.raises(RuntimeError, match="simulated"):
        qcompile.export(mlp(), torch.randn(4, 16), out, overwrite=True)
    assert _leftovers(tmp_path) == ["out"] and _leftovers(out) == ["keep.txt"]
    monkeypatch.undo()
    qcompile.export(mlp(), torch.randn(4, 16), out, overwrite=True)
    assert _leftovers(out) == ["backward.onnx", "forward.onnx", "manifest.json"]
    assert _leftovers(tmp_path) == ["out"]


def test_unexportable_op_names_op_and_layer(tmp_path):
    from qcompile.exporters.onnx_graph import ExportError

    with pytest.raises(ExportError, match=r"max_pool.*layer 'pool'") as info:
        qcompile.export(PooledNet(), torch.randn(2, 3, 8, 8), tmp_path / "out")
    assert isinstance(info.value, ValueError)
    assert _leftovers(tmp_path) == []


def test_missing_dependency_says_which_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(ImportError, match=r"pip install qcompile\[export\]"):
        qcompile.export(mlp(), torch.randn(4, 16), tmp_path / "out")
    monkeypatch.setitem(sys.modules, "torch_mlir", None)
    with pytest.raises(ImportError, match=r"'torch_mlir'.*pip install qcompile\[export\]"):
        qcompile.export(mlp(), torch.randn(4, 16), tmp_path / "out", format="mlir")
    assert _leftovers(tmp_path) == []


def test_import_qcompile_loads_no_export_dependency():
    code = (
        "import sys, qcompile; qcompile.export; "
        "bad = [m for m in ('onnx', 'onnxruntime', 'torch_mlir') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        cli_main(["export", "qcompile/testing/models.py:mlp", "--input-shape", "8,16", "--out", str(out)])
        == 0
    )
    assert "forward.onnx" in capsys.readouterr().out
    assert (out / "manifest.json").is_file()
    with pytest.raises(SystemExit, match="exists"):
        cli_main(["export", "qcompile/testing/models.py:mlp", "--input-shape", "8,16", "--out", str(out)])
    with pytest.raises(SystemExit, match="valid formats"):
        cli_main(["export", "qcompile/testing/models.py:mlp", "--input-shape", "8,16", "--out", str(tmp_path / "b"),
                  "--format", "tflite"])  # fmt: skip
