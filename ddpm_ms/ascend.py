"""Ascend decisions that depend on the chip: overflow detection for loss scaling, and the
operator precision mode that makes ``amp_level`` mean what it says.

Written from MindSpore 2.10's own source and documentation; no Ascend device was available, so
the decisions are pure functions of (device, chip, environment) and are tested with the device
faked (tests/test_ascend.py). The sources:

* ``mindspore/amp.py`` (2.10.0, installed package): ``all_finite`` reads the NPU's global
  float-status register (NPUGetFloatStatusV2, then NPUClearFloatStatusV2) on Atlas training
  (910A: SoC feature ``amp_loss_scale_train_classic_target``), and on Atlas A2 (910B: feature
  ``train_hq_dtype_line``) when ``MS_ASCEND_CHECK_OVERFLOW_MODE=SATURATION_MODE``. Elsewhere it
  looks at the values: the fused AllFinite kernel on Ascend, except when ``RANK_TABLE_FILE`` is
  set, ``MS_DEV_RUNTIME_CONF`` has ``all_finite:False``, the GE backend is used or jit_level is
  O2 (``_enable_all_finite``); else one isfinite per gradient (GPU: FloatStatus).
* ``mindspore/nn/wrap/loss_scale.py`` (``TrainOneStepWithLossScaleCell``, 2.10.0): on the register
  path it clears the register before the computation it checks (``start_overflow_check``), and
  with data parallel it all-reduces the overflow flag over the devices on every path.
* ``mindspore.device_context.ascend.op_precision.precision_mode`` (2.10 API docs): MindSpore's
  default is ``allow_fp32_to_fp16`` on Atlas training (910A: matrix ops - Conv2D, MatMul - run
  in float16 even in a float32 network) and ``must_keep_origin_dtype`` on Atlas A2 and later.
  CANN's ``--precision_mode`` reference: ``force_fp32`` makes matrix ops take float16 inputs
  with float32 outputs where float32 is not implemented (910A's cube units compute in float16)
  and keeps vector ops in float32.

The register holds every overflow on the device since it was last cleared, whatever graph
caused it. A preview or sampling graph run on rank 0 between two train steps, or the previous
step's optimizer and EMA update, would otherwise mark the next step as overflowed. So on that
path the train step clears the register first (an ``all_finite`` call on its input, which reads
and clears), and with several ranks every path all-reduces the finite flag, so all ranks skip
or apply the same step.
"""
import os
from collections import namedtuple

OverflowCheck = namedtuple("OverflowCheck", "method clear_first reduce_flag why")

FLOAT_STATUS = "float_status"      # the NPU's global float-status register (910A; 910B saturation)
ALLFINITE = "allfinite_kernel"     # Ascend's fused AllFinite kernel over the gradients
ISFINITE = "isfinite"              # one isfinite check per gradient (CPU, GPU, Ascend fallback)


def chip(device_target):
    """'910A', '910B' or 'unknown' on Ascend (the SoC features amp.py tests), None elsewhere."""
    if device_target != "Ascend":
        return None
    try:
        from mindspore._c_expression import MSContext
        ctx = MSContext.get_instance()
        if ctx.ascend_soc_supports_feature("amp_loss_scale_train_classic_target"):
            return "910A"
        if ctx.ascend_soc_supports_feature("train_hq_dtype_line"):
            return "910B"
    except Exception:  # noqa: BLE001 - private API; an unknown chip gets the documented defaults
        pass
    return "unknown"


def overflow_check(device_target, chip_name, environ=None, world=1, jit_level=""):
    """How ``mindspore.amp.all_finite`` (2.10) will detect overflow here, and what the train
    step must add: ``clear_first`` (clear the float-status register before the forward pass)
    and ``reduce_flag`` (all-reduce the finite flag over the ranks)."""
    env = os.environ if environ is None else environ
    reduce_flag = world > 1
    if device_target == "Ascend":
        saturation = env.get("MS_ASCEND_CHECK_OVERFLOW_MODE") == "SATURATION_MODE"
        if chip_name == "910A" or (chip_name == "910B" and saturation):
            why = ("Atlas training (910A) has only saturation mode" if chip_name == "910A"
                   else "MS_ASCEND_CHECK_OVERFLOW_MODE=SATURATION_MODE")
            return OverflowCheck(FLOAT_STATUS, True, reduce_flag,
                                 f"{why}: all_finite reads the global float-status register; the step "
                                 "clears it first so previews and sampling cannot trip it")
        conf = env.get("MS_DEV_RUNTIME_CONF", "")
        if "RANK_TABLE_FILE" in env:
            return OverflowCheck(ISFINITE, False, reduce_flag,
                                 "RANK_TABLE_FILE is set: MindSpore turns its AllFinite kernel off, "
                                 "one isfinite per gradient (correct, slower)")
        if "all_finite:False" in conf or "all_finite:false" in conf:
            return OverflowCheck(ISFINITE, False, reduce_flag, "MS_DEV_RUNTIME_CONF turns AllFinite off")
        if jit_level == "O2":
            return OverflowCheck(ISFINITE, False, reduce_flag, "jit_level O2: no AllFinite kernel")
        return OverflowCheck(ALLFINITE, False, reduce_flag,
                             "INF/NaN mode: the AllFinite kernel checks the gradient values "
                             "(if the CANN version check fails MindSpore uses isfinite instead)")
    return OverflowCheck(ISFINITE, False, reduce_flag, f"{device_target}: isfinite on the gradient values")


def precision_mode(amp_level, chip_name):
    """The Ascend operator precision mode for ``amp_level``, or None to leave the default.

    O0 must be float32: on 910A MindSpore's default (allow_fp32_to_fp16) would run every
    convolution and matmul in float16, so O0 asks for ``force_fp32`` there (float16 inputs,
    float32 outputs for the cube ops that have no float32 kernel; vector ops float32). On 910B
    ``must_keep_origin_dtype`` runs the graph's own dtypes. With amp (O1) the network
    casts its convolutions and matmuls to float16 itself and keeps norms, softmax and the loss
    float32, so the graph's dtypes should be kept: ``must_keep_origin_dtype`` on 910B;
    on 910A ``allow_fp32_to_fp16`` (its default) for the remaining float32 matrix ops.
    """
    if chip_name not in ("910A", "910B"):
        return None
    if amp_level == "O0":
        return "force_fp32" if chip_name == "910A" else "must_keep_origin_dtype"
    return "allow_fp32_to_fp16" if chip_name == "910A" else "must_keep_origin_dtype"


def apply_precision_mode(amp_level, device_target, log=print):
    """Set the precision mode on Ascend (before any graph is compiled); returns it or None."""
    name = chip(device_target)
    mode = precision_mode(amp_level, name)
    if device_target == "Ascend" and mode is None:
        log(f"[ddpm_ms] Ascend chip not recognised; operator precision mode left at MindSpore's default "
            f"(amp_level {amp_level} may not be float32 everywhere)")
    if mode is None:
        return None
    import mindspore as ms
    ms.device_context.ascend.op_precision.precision_mode(mode)
    log(f"[ddpm_ms] Ascend {name}: amp_level {amp_level} -> operator precision mode {mode}")
    return mode
