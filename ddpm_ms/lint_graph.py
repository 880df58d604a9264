"""A static Ascend check that runs on CPU: compile the graphs a job runs, read their IR, and
fail on what would break or slow an Ascend job.

    python -m ddpm_ms.lint_graph                      # the built-in tiny U-Net, budgets enforced
    python -m ddpm_ms.lint_graph --config configs/fashion_mnist.yaml --json lint.json

It compiles, in this process, with MindSpore's IR dump on (``MS_DEV_SAVE_GRAPHS=1``, only the
``validate`` pass, ``MS_DEV_DUMP_IR_PASSES``):

- ``train_O0``: one float32 train step;
- ``train_O1``: one mixed-precision step (float16 convs and matmuls, loss scale, overflow check);
- ``train_O1_accum2``: the same with two micro-batches (``grad_accum 2``);
- ``sample_step``: one DDIM sampling step.

Convolutions are compiled ``native`` (what Ascend runs; the CPU matmul route is CPU-only).
The validated IR (after MindSpore's front-end passes, before any device backend) is parsed
node by node, and each graph fails on:

- a float64 or int64 tensor, as a parameter or a node's output (Ascend cubes have no float64,
  and int64 falls to AI-CPU kernels), unless an ``ALLOWED_WIDE`` rule names the code that
  makes it and why it does not reach Ascend;
- a random op (``RANDOM_OP``): noise is drawn on the host from Philox streams so that a resumed
  run draws the same numbers; a random kernel in the graph would break that;
- a ``PyExecute`` node: Python that the compiler could not translate, run on the host at every
  call (it found the sampler's named tuple of coefficients);
- an op outside ``ASCEND_OPS``, the ops this project's graphs use, each with the public API whose
  MindSpore 2.10 documentation lists ``Ascend`` among its supported platforms;
- a redundant Cast: one tensor cast to the same dtype by two Cast nodes, or a Cast of a Cast's
  output (a round trip through float16 loses precision and costs two kernels); each tensor should
  change dtype once, where the precision policy needs it;
- more nodes or Casts than its ``BUDGET`` (built-in tiny config only; the counts are printed for
  any config).

Exit status 0 when every graph passes, 1 otherwise; one line per finding. Run it in a fresh
process: MindSpore reads the dump settings when it starts.
"""
import argparse
import json
import os
import re
import sys
import tempfile
from collections import Counter

# Primitive name in the IR -> the documented MindSpore 2.10 API it comes from, whose
# "Supported Platforms" lists Ascend. Source: the MindSpore 2.10 API reference
# (https://www.mindspore.cn/docs/en/r2.10/api_python/mindspore.ops.html and mindspore.mint.html),
# whose pages are built from the docstrings shipped in the wheel; tests/test_lint_graph.py reads
# each docstring back from the installed MindSpore and checks that it names Ascend. "grad of X":
# the backward kernel MindSpore pairs with the documented forward op X.
ASCEND_OPS = {
    "Abs": "ops.abs", "Adam": "ops.Adam", "Add": "ops.add", "AddN": "ops.AddN", "Assign": "ops.assign",
    "AssignAdd": "ops.assign_add", "BatchMatMul": "ops.BatchMatMul", "BiasAdd": "ops.bias_add",
    "BiasAddGrad": "grad of ops.bias_add", "BroadcastTo": "ops.broadcast_to", "Cast": "ops.cast",
    "ClampScalar": "ops.clamp",
    "Concat": "mint.concat", "Conv2D": "ops.Conv2D", "Conv2DTranspose": "ops.Conv2DTranspose", "Conv2DBackpropFilter": "grad of ops.Conv2D",
    "Conv2DBackpropInput": "grad of ops.Conv2D", "Cos": "ops.cos", "Div": "ops.div", "Divs": "mint.div",
    "Erf": "ops.erf", "Exp": "ops.exp", "ExpandDims": "ops.expand_dims", "Gather": "ops.gather",
    "GreaterEqual": "ops.greater_equal", "GroupNorm": "ops.group_norm", "GroupNormGrad": "grad of ops.group_norm",
    "IsFinite": "ops.isfinite", "Maximum": "ops.maximum", "MatMul": "ops.MatMul", "MatMulExt": "mint.matmul",
    "Minimum": "ops.minimum", "Mul": "ops.mul", "Muls": "mint.mul", "Neg": "ops.neg", "Pow": "ops.pow",
    "PowTensorScalar": "mint.pow", "RealDiv": "ops.RealDiv", "Reciprocal": "ops.reciprocal",
    "ReduceAll": "ops.all", "ReduceMax": "ops.amax", "ReduceMean": "ops.reduce_mean", "ReduceSum": "ops.reduce_sum",
    "RemainderTensorScalar": "mint.remainder", "Reshape": "ops.reshape", "ReverseV2": "ops.flip",
    "Rsqrt": "ops.rsqrt", "Select": "ops.select", "Sigmoid": "ops.sigmoid", "SiLU": "mint.nn.functional.silu",
    "SiLUGrad": "grad of mint.nn.functional.silu", "Sign": "ops.sign", "Sin": "ops.sin", "Softmax": "ops.softmax",
    "SoftmaxBackward": "grad of ops.softmax", "Split": "ops.split", "SplitWithSize": "mint.split", "StridedSlice": "ops.strided_slice",
    "Sqrt": "ops.sqrt", "Square": "ops.square", "Sub": "ops.sub", "SumExt": "mint.sum", "Tile": "ops.tile",
    "Transpose": "ops.transpose", "ZerosLike": "ops.zeros_like", "ZerosLikeExt": "mint.zeros_like",
}

# Kernels MindSpore inserts itself, with no public API to look up: what they are on Ascend.
FRAMEWORK_OPS = {
    "TensorMove": "a device copy auto-monad puts after a parameter's Load when the same graph assigns it "
                  "later (the forward pass must see the old value); CANN's TensorMove",
}

# Graph plumbing, not kernels: never checked against ASCEND_OPS and not counted as nodes.
STRUCTURAL = {"UpdateState", "Load", "MakeTuple", "TupleGetItem", "Depend", "Partial", "Switch", "Return",
              "MakeList", "ListGetItem", "StopGradient", "call", "EqScalar", "LessScalar", "ScalarAdd",
              "ScalarSub", "ScalarMul", "ScalarDiv", "ScalarCast", "TupleToTensor", "ScalarToTensor",
              "RealMakeTuple", "RealTupleGetItem", "TensorToScalar", "TensorToTuple", "shape", "Shape"}

RANDOM_OP = re.compile(r"^(Random\w*|Uniform\w*|StandardNormal|Normal\w*|Dropout\w*|Multinomial\w*|Rand\w*|"
                       r"Gamma|Poisson|TruncatedNormal|Bernoulli\w*|LogNormal\w*)$")

# Float64/int64 tensors that are allowed, by the source line (a frame of the node's call stack) that
# makes them, with the reason.
ALLOWED_WIDE = {
    "all_finite(grads)": "mindspore.amp.all_finite on CPU and GPU counts finite tensors in int64; on Ascend "
                         "the AllFinite kernel or the float-status registers make the check instead "
                         "(ddpm_ms.ascend.overflow_check)",
}

# Built-in tiny config only: measured counts (MindSpore 2.10.0, CPU) with a little headroom.
# A graph that grows past its budget fails; lower it when a change makes a graph smaller.
BUDGET = {                                       # measured: nodes, Casts
    "train_O0": {"nodes": 2440, "casts": 2},       # 2388, 1
    "train_O1": {"nodes": 3250, "casts": 490},     # 3182, 477 (147 of them all_finite's CPU path)
    "train_O1_accum2": {"nodes": 3720, "casts": 495},   # 3644, 480 (both graphs of the step)
    "sample_step": {"nodes": 295, "casts": 2},     # 287, 1
}

TINY = dict(dataset="image_folder", data_dir="unused", image_size=8, channels=3, dim=8, dim_mults=[1, 2],
            attn_heads=1, attn_head_dim=8, timesteps=50, batch_size=4, max_steps=1, lr=1e-3, ema_decay=0.9,
            log_every=1, save_every=1, sample_every=0, num_preview=2, sample_steps=2, run_name="lint",
            device_target="CPU", seed=3, loss_scale=1024.0, mode="graph")

_NODE = re.compile(r"^(%\d+)\([^)]*\) = (?:PrimFunc_)?([A-Za-z_][\w:]*)\((%[\w.]+)?")
_SUBGRAPH = re.compile(r"^subgraph @(\S+?)\(")
_DTYPE = re.compile(r"Tensor\[(\w+)\]")
_PARAM = re.compile(r"^%para\d+_(\S+): <([^>]*)>")
_WIDE = re.compile(r"Tensor\[(Float64|Int64)\]")


def parse_ir(text):
    """The nodes and parameters of one validated IR file.

    Returns (params, nodes): params = [(name, type text)], nodes = [dict(op, out, frames, id, src,
    graph)] with ``op`` the primitive's name (``PrimFunc_`` dropped), ``out`` the output type text
    (after ``->`` on the ``:`` line under the node; '' when there is none), ``frames`` the
    ``# In file`` source lines under the node (its call stack, outermost first), ``id`` its value
    ("%3"), ``src`` its first operand when that is a value ("%2", "%para1_x"; else None) and
    ``graph`` the subgraph it is in (values are numbered per subgraph).
    """
    params, nodes, node, graph = [], [], None, ""
    for raw in text.split("\n"):
        line = raw.strip()
        p = _PARAM.match(line)
        m = _NODE.match(line)
        g = _SUBGRAPH.match(line)
        if g:
            graph, node = g.group(1), None
        elif p:
            params.append((p.group(1), p.group(2)))
            node = None
        elif m:
            node = dict(op=m.group(2).split("::")[-1], out="", frames=[], id=m.group(1), src=m.group(3),
                        graph=graph)
            nodes.append(node)
        elif node is not None and line.startswith(":") and "->" in line and not node["out"]:
            node["out"] = line.split("->", 1)[1].strip()
        elif node is not None and line.startswith("# In file "):
            node["frames"].append(line[len("# In file "):].split("<~~")[0].strip())
        elif line and not line.startswith(("#", ":")):
            node = None
    return params, nodes


def _where(frames):
    """'samplers.py:74' for the innermost ddpm_ms frame of a node (else its innermost frame)."""
    ours = [f for f in frames if "ddpm_ms" in f] or frames
    if not ours:
        return "?"
    m = re.match(r"(\S+?):(\d+)", ours[-1])
    return f"{os.path.basename(m.group(1))}:{m.group(2)}" if m else ours[-1][:80]


def check_graph(name, text, budget=None):
    """Findings (one line each) and counts for one graph's validated IR."""
    params, nodes = parse_ir(text)
    kernels = [n for n in nodes if n["op"] not in STRUCTURAL]
    counts = Counter(n["op"] for n in kernels)
    findings = []
    for pname, ptype in params:
        if _WIDE.search(ptype):
            findings.append(f"{name}: parameter {pname} is {_WIDE.search(ptype).group(1)}")
    wide = Counter()
    for n in nodes:
        hit = _WIDE.search(n["out"])
        if hit and not any(key in f for f in n["frames"] for key in ALLOWED_WIDE):
            wide[(n["op"], hit.group(1), _where(n["frames"]))] += 1
    findings += [f"{name}: {k} {op} node(s) output {dt} tensors, from {where}" for (op, dt, where), k in wide.items()]
    findings += [f"{name}: {line}" for line in redundant_casts(nodes)]
    for op in sorted(counts):
        if op == "PyExecute":
            where = sorted({_where(n["frames"]) for n in kernels if n["op"] == op})
            findings.append(f"{name}: {counts[op]} PyExecute node(s): Python run on the host at every call "
                            f"(JIT fallback), from {', '.join(where)}")
        elif RANDOM_OP.match(op):
            findings.append(f"{name}: random op {op} x{counts[op]} in the graph (draw noise on the host: "
                            "resume must repeat it)")
        elif op not in ASCEND_OPS and op not in FRAMEWORK_OPS:
            findings.append(f"{name}: op {op} x{counts[op]} is not in ASCEND_OPS (look it up in MindSpore's "
                            "Ascend operator docs, then add it with its API)")
    summary = dict(graph=name, nodes=len(kernels), casts=counts.get("Cast", 0), ops=dict(sorted(counts.items())))
    if budget:
        for key in ("nodes", "casts"):
            if budget[key] and summary[key] > budget[key]:
                findings.append(f"{name}: {summary[key]} {key} is over the budget of {budget[key]} (BUDGET in "
                                "ddpm_ms/lint_graph.py)")
    return findings, summary


def _out_dtype(node):
    """'Float16' for a node whose output type text is <Tensor[Float16], ...> ('?' when untyped)."""
    m = _DTYPE.search(node["out"])
    return m.group(1) if m else "?"


def redundant_casts(nodes):
    """One line per redundant Cast group: the same value cast to the same dtype more than once, or a
    Cast whose input is another Cast's output (values compared within one subgraph)."""
    casts = [n for n in nodes if n["op"] == "Cast" and n["src"]]
    cast_outputs = {(n["graph"], n["id"]): n for n in casts}
    repeats, chains = {}, Counter()
    for n in casts:
        repeats.setdefault((n["graph"], n["src"], _out_dtype(n)), []).append(n)
        first = cast_outputs.get((n["graph"], n["src"]))
        if first is not None:
            chains[(_out_dtype(first), _out_dtype(n), _where(n["frames"]))] += 1
    lines = [f"{len(group)} Cast nodes cast one value ({src}) to {dtype}, from {_where(group[-1]['frames'])} "
             "(cast once and reuse the result)" for (_, src, dtype), group in repeats.items() if len(group) > 1]
    lines += [f"{k} Cast node(s) cast a Cast's {mid} output again, to {dtype}, from {at} (a round trip: cast "
              "the original value once)" for (mid, dtype, at), k in chains.items()]
    return lines


def _new_validate_files(ir_dir, seen):
    files = sorted(f for f in os.listdir(ir_dir) if re.match(r"\d+_validate_\d+\.ir$", f)) if os.path.isdir(ir_dir) else []
    new = [f for f in files if f not in seen]
    seen.update(new)
    return [os.path.join(ir_dir, f) for f in new]


def compile_graphs(cfg_base, ir_dir):
    """Compile the four graphs and return {graph name: validated IR text}."""
    import mindspore as ms
    import numpy as np
    from .config import resolve
    from .runtime import setup_device
    from .samplers import make_sampler
    from .sampling import image_shape, sample, sampling_options
    from .schedule import build_schedule
    from .trainer import Trainer

    setup_device("CPU", "graph", -1, seed=0, verbose=False)
    seen, texts = set(), {}

    def collect(name):
        files = _new_validate_files(ir_dir, seen)
        if not files:
            raise SystemExit(f"error: compiling {name} wrote no validate IR to {ir_dir}; MindSpore did not "
                             "honour MS_DEV_SAVE_GRAPHS (run lint_graph in a fresh process)")
        texts[name] = "\n".join(open(f, encoding="utf-8", errors="replace").read() for f in files)

    variants = (("train_O0", dict(amp_level="O0")), ("train_O1", dict(amp_level="O1")),
                ("train_O1_accum2", dict(amp_level="O1", grad_accum=2)))
    trainer = None
    for name, over in variants:
        cfg = resolve(base=dict(cfg_base, conv_impl="native", **over))
        trainer = Trainer(cfg, log=lambda *_: None)
        trainer.setup(lambda epoch, skip: iter([]), 8)
        shape = (cfg["batch_size"],) + tuple(image_shape(cfg))
        rng = np.random.default_rng(0)
        batches = [ms.Tensor(rng.uniform(-1, 1, shape).astype(np.float32)) for _ in range(cfg["grad_accum"])]
        trainer._one_step(batches)
        collect(name)
    cfg = trainer.cfg
    opts = sampling_options(cfg, "ddim", 1, 0.0)
    sample(trainer.ema_net if getattr(trainer, "ema_net", None) is not None else trainer.net,
           make_sampler(schedule=build_schedule(cfg), **opts), 2, image_shape(cfg), batch_size=2, seed=0,
           progress=False)
    collect("sample_step")
    return texts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="a YAML config to lint (default: a built-in tiny U-Net, "
                                                  "with node and Cast budgets)")
    p.add_argument("--ir_dir", default=None, help="where MindSpore writes the IR (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the counts and findings here")
    args = p.parse_args(argv)
    if "mindspore" in sys.modules:
        raise SystemExit("error: MindSpore is already imported; run `python -m ddpm_ms.lint_graph` in a fresh "
                         "process (the IR dump is set when MindSpore starts)")
    ir_dir = os.path.abspath(args.ir_dir or tempfile.mkdtemp(prefix="ddpm_ms_lint_"))
    os.environ.update(MS_DEV_SAVE_GRAPHS="1", MS_DEV_DUMP_IR_PASSES="validate", MS_DEV_SAVE_GRAPHS_PATH=ir_dir)
    os.environ.setdefault("GLOG_v", "3")
    from .cpu_env import apply_cpu_env
    apply_cpu_env(verbose=False)
    if args.config:
        from .config import read_yaml
        base = dict(read_yaml(args.config), device_target="CPU", mode="graph", run_name="lint",
                    output_dir=tempfile.mkdtemp(prefix="ddpm_ms_lint_run_"))
        budgets = {}
    else:
        base = dict(TINY, output_dir=tempfile.mkdtemp(prefix="ddpm_ms_lint_run_"))
        budgets = BUDGET
    texts = compile_graphs(base, ir_dir)
    findings, summaries = [], []
    for name, text in texts.items():
        f, s = check_graph(name, text, budgets.get(name))
        findings += f
        summaries.append(s)
    print("| graph | nodes | Casts | distinct ops |")
    print("|---|--:|--:|--:|")
    for s in summaries:
        print(f"| {s['graph']} | {s['nodes']} | {s['casts']} | {len(s['ops'])} |")
    for line in findings:
        print(f"lint_graph: {line}")
    print(f"lint_graph: {len(findings)} finding(s) in {len(summaries)} graphs; IR in {ir_dir}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(graphs=summaries, findings=findings, ir_dir=ir_dir), fh, indent=1)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
