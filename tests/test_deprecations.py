"""No deprecated MindSpore API is called from ddpm_ms: a tiny train step (adamw, clipping, EMA,
grad accumulation) and the device helpers run with Python warnings and MindSpore's own
deprecation log visible, and any DeprecationWarning / FutureWarning or "deprecated" log line
whose caller is a ddpm_ms file fails the test."""
import logging
import os
import traceback
import warnings

import numpy as np

import mindspore as ms

from ddpm_ms.config import resolve
from ddpm_ms.runtime import available_targets, current_device_target, resolve_device_target
from ddpm_ms.trainer import Trainer

OURS = os.sep + "ddpm_ms" + os.sep


class _DeprecationLog(logging.Handler):
    """MindSpore's @deprecated logs a WARNING (once per API) instead of warning in Python. The
    caller of its wrapper (the frame just outside common/_decorator.py) is the origin; another
    deprecated call inside MindSpore (nn.Adam building FusedSparseAdam) is not ours."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.ours = []

    def emit(self, record):
        message = record.getMessage()
        if "deprecat" not in message.lower():
            return
        stack = traceback.extract_stack()
        wrappers = [i for i, f in enumerate(stack) if f.filename.endswith(os.path.join("common", "_decorator.py"))]
        caller = stack[wrappers[0] - 1] if wrappers else next(
            (f for f in reversed(stack) if os.sep + "mindspore" + os.sep not in f.filename
             and "logging" not in f.filename and f.filename != __file__), None)
        if caller is not None and OURS in caller.filename:
            self.ours.append(f"{caller.filename}:{caller.lineno}: {message}")


def test_no_deprecated_mindspore_api_is_called_from_ddpm_ms(tiny_folder, tmp_path):
    from mindspore import log as ms_log
    logger = ms_log._get_logger()
    handler, level = _DeprecationLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ms.set_context(mode=ms.GRAPH_MODE)
            available_targets(), resolve_device_target("auto"), current_device_target()
            for accum in (1, 2):
                cfg = resolve(base=dict(
                    dataset="image_folder", data_dir=str(tiny_folder), image_size=8, channels=3, dim=8,
                    dim_mults=[1, 2], attn_heads=1, attn_head_dim=8, timesteps=50, batch_size=4,
                    grad_accum=accum, optimizer="adamw", weight_decay=0.01, grad_clip=1.0, ema_decay=0.9,
                    max_steps=2, output_dir=str(tmp_path), run_name="run", num_parallel_workers=1,
                    mode="graph", device_target="CPU"))
                trainer = Trainer(cfg, log=lambda *_: None)
                trainer.setup(epoch_batches=lambda *_: iter([]), steps_per_epoch=1)
                x0 = ms.Tensor(np.zeros((4, 3, 8, 8), np.float32))
                loss = trainer._one_step([x0] * accum)
                assert np.isfinite(float(loss.asnumpy()))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, (DeprecationWarning, FutureWarning)) and OURS in w.filename]
    assert not ours + handler.ours, "\n".join(ours + handler.ours)


# APIs that MindSpore 2.10 marks removed after 2.9.0 or "to be deprecated", which no run above
# reaches (set_auto_parallel_context runs only under msrun): they must not appear in our code.
DATED = {"set_auto_parallel_context", "clip_by_global_norm", "AdamWeightDecay", "assign_add"}


def test_no_dated_mindspore_api_is_named_in_our_code():
    import ast
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = [os.path.join(root, f) for f in ("train.py", "sample.py")]
    for folder, _, names in os.walk(os.path.join(root, "ddpm_ms")):
        files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    found = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):  # ops.X / ms.X, and from mindspore... import X
            names = [node.attr] if isinstance(node, ast.Attribute) else []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mindspore"):
                names = [alias.name for alias in node.names]
            found += [f"{os.path.relpath(path, root)}:{node.lineno}: {n}" for n in names if n in DATED]
    assert len(files) > 10 and not found, "\n".join(found)
