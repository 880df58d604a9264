"""bench/quality_table.py: row parsing, the resumable results file and the Table-1 layout."""
import importlib.util
import json

import numpy as np
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
    assert qt.parse_row("dpmpp2m10") == ("dpmpp2m", 10, None)
    for bad in ("ddim50", "dim50:0", "ddimX:1", "ddim10:abc", "dpmpp2m", "dpmpp2mX", "dpmpp2m0",
                "dpmpp2m10:0"):
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


def _calls_results():
    """A fake result set: FID falls with calls, DPM-Solver++ best, DDIM eta 1 worst; one DDPM row."""
    rows = []
    for n in (5, 10, 20):
        rows += [_row(f"ddim{n}:0", "ddim", n, 0.0, 100.0 / n, n=1000),
                 _row(f"ddim{n}:1", "ddim", n, 1.0, 200.0 / n, n=1000),
                 _row(f"dpmpp2m{n}", "dpmpp2m", n, None, 50.0 / n, n=1000)]
    rows.append(_row("ddpm", "ddpm", 1000, 1.0, 3.5, n=500))
    rows.append(_row("real", "real", None, None, 0.75))
    rows.append(_row("ddim50:0", "ddim", 50, 0.0, 1.0))         # a table-1 row outside the calls asked for
    return {r["row"]: r for r in rows}


def test_calls_rows():
    assert qt.calls_rows([5, 10]) == ["ddim5:0", "ddim5:1", "dpmpp2m5", "ddim10:0", "ddim10:1", "dpmpp2m10"]
    assert [qt.parse_row(r)[0] for r in qt.calls_rows([5])] == ["ddim", "ddim", "dpmpp2m"]


def test_render_calls_places_fid_and_kid_by_sampler_and_calls():
    meta = dict(ckpt="x.ckpt", step=1300, num_samples=1000, num_ref=10000, sha256="cd" * 32, seed=0)
    lines = qt.render_calls(_calls_results(), [5, 10, 20, 100], meta).splitlines()
    assert "| sampler \\ network calls | n | 5 | 10 | 20 | 100 |" in lines
    assert "| DDIM eta 0 | 1000 | 20.00 / 0.0100 | 10.00 / 0.0100 | 5.00 / 0.0100 | - |" in lines
    assert "| DDIM eta 1 | 1000 | 40.00 / 0.0100 | 20.00 / 0.0100 | 10.00 / 0.0100 | - |" in lines
    assert "| DPM-Solver++(2M) | 1000 | 10.00 / 0.0100 | 5.00 / 0.0100 | 2.50 / 0.0100 | - |" in lines
    assert "DDPM (1000 calls, n = 500): FID 3.50 / KID 0.0100." in lines
    assert not any("real" in line.split("|")[1] for line in lines if line.startswith("| "))
    assert "same x_T" in lines[0]
    # the Table-1 render still works with DPM-Solver++ rows in the results (no eta)
    table = qt.render(_calls_results(), 1000, meta)
    assert "| dpmpp2m10 | dpmpp2m | 10 | - | 5.00 |" in table


def test_plot_calls_writes_a_figure(tmp_path):
    from PIL import Image
    path = qt.plot_calls(_calls_results(), [5, 10, 20], str(tmp_path / "calls.png"))
    with Image.open(path) as img:
        assert img.size == (1000, 400)
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10      # not blank: axes, three lines and a marker


def test_rows_name_their_timestep_grid():
    assert qt.split_spacing("ddim10:0@trailing") == ("ddim10:0", "trailing")
    assert qt.split_spacing("dpmpp2m20") == ("dpmpp2m20", None)
    with pytest.raises(SystemExit, match="bad timestep grid"):
        qt.split_spacing("ddim10:0@middle")
    assert qt.calls_rows([5], "linspace") == ["ddim5:0@linspace", "ddim5:1@linspace", "dpmpp2m5@linspace"]
    assert qt.grid_rows([10]) == ["ddim10:0@leading", "ddim10:0@trailing", "ddim10:0@linspace",
                                  "dpmpp2m10@leading", "dpmpp2m10@trailing", "dpmpp2m10@linspace"]


def _grid_results():
    fids = {("ddim", "leading"): 40.0, ("ddim", "trailing"): 30.0, ("ddim", "linspace"): 35.0,
            ("dpmpp2m", "leading"): 20.0, ("dpmpp2m", "trailing"): 25.0}        # dpmpp2m linspace not run
    rows = []
    for (sampler, sp), fid in fids.items():
        name = f"{sampler}10{':0' if sampler == 'ddim' else ''}@{sp}"
        r = _row(name, sampler, 10, 0.0 if sampler == "ddim" else None, fid, n=1000)
        rows.append(dict(r, spacing=sp))
    # same sampler and steps on the trailing grid but eta 1: not a DDIM eta 0 cell
    rows.append(dict(_row("ddim10:1@trailing", "ddim", 10, 1.0, 1.0, n=1000), spacing="trailing"))
    return {r["row"]: r for r in rows}


def test_render_grid_marks_the_best_spacing_per_row():
    meta = dict(ckpt="x.ckpt", step=2515, num_samples=1000, num_ref=10000, sha256="ab" * 32, seed=0)
    lines = qt.render_grid(_grid_results(), [10, 20], meta).splitlines()
    assert "| sampler | calls | leading | trailing | linspace |" in lines
    assert "| DDIM eta 0 | 10 | 40.00 / 0.0100 | **30.00 / 0.0100** | 35.00 / 0.0100 |" in lines
    assert "| DPM-Solver++(2M) | 10 | **20.00 / 0.0100** | 25.00 / 0.0100 | - |" in lines
    assert "| DDIM eta 0 | 20 | - | - | - |" in lines


def test_calls_table_keeps_one_timestep_grid():
    results = _grid_results()
    results["ddpm"] = dict(_row("ddpm", "ddpm", 1000, 1.0, 3.5, n=500), spacing=None)
    meta = dict(ckpt="x.ckpt", step=2515, num_samples=1000, num_ref=10000, sha256="ab" * 32, seed=0)
    lines = qt.render_calls(results, [10], meta, "trailing").splitlines()
    assert "| DDIM eta 0 | 1000 | 30.00 / 0.0100 |" in lines
    assert "| DDIM eta 1 | 1000 | 1.00 / 0.0100 |" in lines
    assert "| DPM-Solver++(2M) | 1000 | 25.00 / 0.0100 |" in lines
    assert "DDPM (1000 calls, n = 500): FID 3.50 / KID 0.0100." in lines
    assert "Timestep grid: trailing." in lines[0]
    assert sorted(r["row"] for r in qt.calls_results(results, [10], "leading")) == [
        "ddim10:0@leading", "ddpm", "dpmpp2m10@leading"]
