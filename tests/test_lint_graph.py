"""ddpm_ms.lint_graph: the IR parser and checks on a hand-written dump, the Ascend op list
against MindSpore's own documentation, and (slow) the whole lint on the tiny U-Net's graphs."""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from ddpm_ms import lint_graph as lg

# A dump in MindSpore 2.10's format: a parameter, then nodes, each with its type line, scope
# line and call stack ("# In file", outermost first) under it.
IR = """# IR entry: @1_step_2
# Total params: 2
# Params:
%para1_x: <Tensor[Float32], (4, 3, 8, 8)> : [4, 3, 8, 8]
%para2_steps: <Tensor[Int64], (4)> : [4]

subgraph @1_step_2() {
  %0(CNode_1) = PrimFunc_Cast(%para1_x, I64(42))
      : (<Tensor[Float32], (4, 3, 8, 8)>, <Int64, NoShape>) -> (<Tensor[Float16], (4, 3, 8, 8)>)
      # Fullname with scope: (Default/Cast-op0)
      # In file /src/ddpm_ms/unet.py:81, 12~26/        y = x.astype(ms.float16)/
  %1(CNode_2) = Load(%para1_x, UMonad[U])
      : (<Ref[Tensor[Float32]], (4, 3, 8, 8)>, <UMonad, NoShape>) -> (<Tensor[Float32], (4, 3, 8, 8)>)
  %2(CNode_3) = Conv2D(%0, %1) {instance name: conv2d}
      : (<Tensor[Float16], (4, 3, 8, 8)>, <Tensor[Float16], (4, 3, 3, 3)>) -> (<Tensor[Float16], (4, 4, 8, 8)>)
      # In file /src/ddpm_ms/unet.py:90, 8~20/        h = self.conv(y)/
  %3(CNode_4) = PrimFunc_Cast(%2, I64(35))
      : (<Tensor[Bool], ()>, <Int64, NoShape>) -> (<Tensor[Int64], ()>)
      # In file /src/ddpm_ms/train_step.py:253, 17~27/        finite = all_finite(grads)/
      # In file /site-packages/mindspore/amp.py:10, 1~2/    return cast(x)/
  %4(CNode_5) = PrimFunc_Cast(%2, I64(35))
      : (<Tensor[Float16], ()>, <Int64, NoShape>) -> (<Tensor[Float64], ()>)
      # In file /src/ddpm_ms/losses.py:58, 1~2/        w = snr.astype(ms.float64)/
  %5(CNode_6) = StandardNormal((I64(4), I64(3)))
      : (<Tuple[Int64*2], TupleShape(NoShape, NoShape)>) -> (<Tensor[Float32], (4, 3)>)
      # In file /src/ddpm_ms/losses.py:40, 1~2/        noise = ops.randn(shape)/
  %6(CNode_7) = PyExecute("coefs.a * x", %5)
      : (<String, NoShape>, <Tensor[Float32], (4, 3)>) -> (<Tensor[Float32], (4, 3)>)
      # In file /src/ddpm_ms/samplers.py:74, 14~21/    pred_x0 = coefs.a * x/
  %7(CNode_8) = FancyKernel(%6)
      : (<Tensor[Float32], (4, 3)>) -> (<Tensor[Float32], (4, 3)>)
  %8(CNode_9) = MakeTuple(%6, %7)
      : (<Tensor[Float32], (4, 3)>, <Tensor[Float32], (4, 3)>) -> (<Tuple[Tensor[Float32]*2], TupleShape((4, 3), (4, 3))>)
  Return(%8)
}
"""


def test_parse_ir_reads_ops_types_and_the_stack_under_each_node():
    params, nodes = lg.parse_ir(IR)
    assert params == [("x", "Tensor[Float32], (4, 3, 8, 8)"), ("steps", "Tensor[Int64], (4)")]
    assert [n["op"] for n in nodes] == ["Cast", "Load", "Conv2D", "Cast", "Cast", "StandardNormal", "PyExecute",
                                        "FancyKernel", "MakeTuple"]
    assert nodes[0]["out"] == "(<Tensor[Float16], (4, 3, 8, 8)>)"
    assert nodes[0]["frames"] == ["/src/ddpm_ms/unet.py:81, 12~26/        y = x.astype(ms.float16)/"]
    assert nodes[1]["frames"] == [] and len(nodes[3]["frames"]) == 2
    assert lg._where(nodes[3]["frames"]) == "train_step.py:253"


def test_check_graph_finds_each_kind_of_problem_once():
    findings, summary = lg.check_graph("g", IR, budget={"nodes": 6, "casts": 2})
    # kernels: everything but Load and MakeTuple
    assert summary["nodes"] == 7 and summary["casts"] == 3
    assert summary["ops"] == {"Cast": 3, "Conv2D": 1, "FancyKernel": 1, "PyExecute": 1, "StandardNormal": 1}
    text = "\n".join(findings)
    assert "parameter steps is Int64" in text
    assert "1 Cast node(s) output Float64 tensors, from losses.py:58" in text
    assert "Int64 tensors" not in text                        # the all_finite int64 is allowed
    assert "random op StandardNormal x1" in text
    assert "1 PyExecute node(s)" in text and "samplers.py:74" in text
    assert "op FancyKernel x1 is not in ASCEND_OPS" in text
    assert "7 nodes is over the budget of 6" in text and "3 casts is over the budget of 2" in text
    assert len(findings) == 7
    assert lg.check_graph("g", IR, budget={"nodes": 7, "casts": 3})[0] == findings[:5]


# Two subgraphs that both number their values from %0: only the first repeats a cast (%0 to
# Float16 twice) and casts a cast's output back (%1 -> Float32); the second casts %0 once.
REDUNDANT = """subgraph @1_step_2() {
  %0(CNode_1) = GroupNorm(%para1_x)
      : (<Tensor[Float32], (4, 8)>) -> (<Tensor[Float32], (4, 8)>)
  %1(CNode_2) = PrimFunc_Cast(%0, I64(42))
      : (<Tensor[Float32], (4, 8)>, <Int64, NoShape>) -> (<Tensor[Float16], (4, 8)>)
      # In file /src/ddpm_ms/unet.py:82, 8~20/        return y.astype(x.dtype)/
  %2(CNode_3) = PrimFunc_Cast(%0, I64(42))
      : (<Tensor[Float32], (4, 8)>, <Int64, NoShape>) -> (<Tensor[Float16], (4, 8)>)
      # In file /src/ddpm_ms/unet.py:99, 8~20/        h = g.astype(ms.float16)/
  %3(CNode_4) = PrimFunc_Cast(%1, I64(43))
      : (<Tensor[Float16], (4, 8)>, <Int64, NoShape>) -> (<Tensor[Float32], (4, 8)>)
      # In file /src/ddpm_ms/unet.py:120, 8~20/        y = h.astype(ms.float32)/
  Return(%3)
}
subgraph @2_other_3(%para2_y) {
  %0(CNode_5) = Neg(%para2_y)
      : (<Tensor[Float32], (4, 8)>) -> (<Tensor[Float32], (4, 8)>)
  %1(CNode_6) = PrimFunc_Cast(%0, I64(42))
      : (<Tensor[Float32], (4, 8)>, <Int64, NoShape>) -> (<Tensor[Float16], (4, 8)>)
  Return(%1)
}
"""


def test_redundant_casts_are_found_per_subgraph():
    _, nodes = lg.parse_ir(REDUNDANT)
    assert [(n["graph"], n["id"], n["src"]) for n in nodes if n["op"] == "Cast"] == [
        ("1_step_2", "%1", "%0"), ("1_step_2", "%2", "%0"), ("1_step_2", "%3", "%1"), ("2_other_3", "%1", "%0")]
    lines = lg.redundant_casts(nodes)
    assert lines == ["2 Cast nodes cast one value (%0) to Float16, from unet.py:99 (cast once and reuse the result)",
                     "1 Cast node(s) cast a Cast's Float16 output again, to Float32, from unet.py:120 (a round "
                     "trip: cast the original value once)"]
    findings, _ = lg.check_graph("g", REDUNDANT)
    assert findings == [f"g: {line}" for line in lines]
    # the first dump's two casts of %2 go to different dtypes: not redundant
    assert lg.redundant_casts(lg.parse_ir(IR)[1]) == []


def test_ascend_ops_are_documented_for_ascend():
    """Each entry's API (or, for a backward kernel, its forward API) says Ascend under
    'Supported Platforms' in the installed MindSpore's docstrings, which the API reference is built from."""
    import mindspore
    missing = []
    for prim, api in lg.ASCEND_OPS.items():
        obj = mindspore
        for part in api.replace("grad of ", "").split("."):
            obj = getattr(obj, part, None)
        doc = getattr(obj, "__doc__", None) or ""
        m = re.search(r"Supported Platforms:\s*((?:``\w+``\s*)+)", doc)
        if not m or "``Ascend``" not in m.group(1):
            missing.append(f"{prim} ({api})")
    assert not missing, missing
    assert not set(lg.ASCEND_OPS) & (lg.STRUCTURAL | set(lg.FRAMEWORK_OPS))
    assert not any(lg.RANDOM_OP.match(op) for op in lg.ASCEND_OPS)


def test_refuses_to_run_after_mindspore_is_imported():
    import mindspore  # noqa: F401
    with pytest.raises(SystemExit, match="fresh process"):
        lg.main([])


@pytest.mark.slow
def test_lint_passes_on_the_tiny_unet_within_budget(tmp_path):
    out = tmp_path / "lint.json"
    r = subprocess.run([sys.executable, "-m", "ddpm_ms.lint_graph", "--ir_dir", str(tmp_path / "ir"),
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["findings"] == []
    graphs = {g["graph"]: g for g in report["graphs"]}
    assert sorted(graphs) == sorted(lg.BUDGET)
    for name, g in graphs.items():
        assert 0 < g["nodes"] <= lg.BUDGET[name]["nodes"] and g["casts"] <= lg.BUDGET[name]["casts"]
    # native convolutions (what Ascend runs), float32 at O0, float16 casts at O1
    assert graphs["train_O0"]["ops"]["Conv2D"] > 0 and "Im2Col" not in graphs["train_O0"]["ops"]
    assert graphs["train_O0"]["casts"] < 5 < graphs["train_O1"]["casts"]
    assert "PyExecute" not in graphs["sample_step"]["ops"]
    assert "| sample_step |" in r.stdout
