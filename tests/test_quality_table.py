"""bench/quality_table.py: row parsing, the resumable results file and the Table-1 layout."""
import importlib.util
import json

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("quality_table", ROOT / "bench" / "quality_table.py")
qt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qt)


def test_parse_row():
    assert qt.parse_row("ddim50:0") == ("ddim", 50, 0.0)
    assert qt.parse_row("ddim10:0.5") == ("ddim", 10, 0.5)
    assert qt.parse_row("ddpm") == ("ddpm", None, 1.0)
    assert qt.parse_row("real") == ("real", None, None)
    for bad in ("ddim50", "dim50:0", "ddimX:1", "ddim10:abc"):
        with pytest.raises(SystemExit, match="bad row"):
            qt.parse_row(bad)


def _row(name, sampler, steps, eta, fid, secs=None, n=2000):
    return dict(row=name, sampler=sampler, steps=steps, eta=eta, num_samples=n, sample_seconds=secs,
                fid=fid, kid_mean=0.01, kid_std=0.001, precision=0.5, recall=0.4)


def test_load_results_newest_line_wins(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        _row("ddim10:0", "ddim", 10, 0.0, 30.0), _row("real", "real", None, None, 1.0),
        _row("ddim10:0", "ddim", 10, 0.0, 25.0)]) + "\n\n")
    rows = qt.load_results(str(path))
    assert sorted(rows) == ["ddim10:0", "real"]
    assert rows["ddim10:0"]["fid"] == 25.0
    assert qt.load_results(str(tmp_path / "missing.jsonl")) == {}


def test_render_grid_places_each_fid_in_its_cell():
    results = {r["row"]: r for r in [
        _row("ddim10:0", "ddim", 10, 0.0, 31.5, secs=100.0),
        _row("ddim20:0", "ddim", 20, 0.0, 21.25),
        _row("ddim10:1", "ddim", 10, 1.0, 48.0),
        _row("ddpm", "ddpm", 1000, 1.0, 9.0),
        _row("real", "real", None, None, 0.75)]}
    meta = dict(ckpt="x.ckpt", step=1300, num_samples=2000, num_ref=10000, sha256="ab" * 32)
    text = qt.render(results, 1000, meta)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| eta \\ S"))
    assert header == "| eta \\ S | 10 | 20 | 1000 |"
    assert "| 0 | 31.50 | 21.25 | - |" in lines          # eta 0: no DDPM-1000 run
    assert "| 1 | 48.00 | - | 9.00 |" in lines          # eta 1: DDPM sits at S = T
    assert any(line.startswith("Floor: 2000 real training images score FID 0.75") for line in lines)
    # per-row table: timing only where sampling was timed (2000 / 100 s = 20 images/s)
    row = next(line for line in lines if line.startswith("| ddim10:0 |"))
    assert row.endswith("| 100 | 20.00 |")
    assert next(line for line in lines if line.startswith("| real |")).endswith("| - | - |")
    # real row comes last in the per-row table
    assert [line.split("|")[1].strip() for line in lines if line.startswith("| ")][-1] == "real"
