"""DPM-Solver++(2M): ddpm_ms's coefficient tables against diffusers' DPMSolverMultistepScheduler.

    /work/venv-bench/bin/python bench/check_dpmsolver.py

Needs numpy, torch and diffusers (``pip install --no-deps diffusers`` plus huggingface_hub,
safetensors, regex, importlib_metadata, filelock, requests), not MindSpore: ddpm_ms.samplers
imports only numpy and ddpm_ms.schedule. For every case both solvers start from the same x_T
and get the same random model output at each step (diffusers' scheduler: algorithm_type
"dpmsolver++", solver_order 2, midpoint; ours: ``DPMSolverPP2MSampler`` stepped in float64
numpy). Prints, per case, the max abs difference of x over all steps; diffusers computes in
float32, so differences of order 1e-6 are its rounding. tests/test_samplers.py runs
``compare`` where diffusers is installed.

Two kinds of model output, both drawn at random per step:
- ``denoiser``: the output whose pred_x0 is a fresh uniform(-1, 1) image at every step,
  computed from each solver's own x (so x stays of order 1 and the absolute difference is
  meaningful);
- ``random``: N(0, 1) whatever x is; x then grows to a few hundred (eps objective), so the
  difference is reported relative to max(1, |x|).
diffusers' tables are rebuilt from our float64 alphas_cumprod (``float64_tables``): its own
float32 cumprod leaves 1 - abar_0 = 1e-4 with three digits, which alone moves the last
'sigma_min' step by 1e-4. With S <= 2 and the eps objective, the first step at t = 999 divides
by alpha = 0.0064, so diffusers' float32 pred_x0 is off by about 1e-5 there.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_ms.samplers import DPMSolverPP2MSampler  # noqa: E402
from ddpm_ms.schedule import NoiseSchedule, target  # noqa: E402

PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def model_output(kind, objective, x, abar, draw):
    """A random model output at level abar for x (float64 numpy): see the module docstring."""
    if kind == "random":
        return draw
    x0 = np.clip(draw, -1.0, 1.0)  # draw ~ uniform(-1, 1) here
    eps = (x - np.sqrt(abar) * x0) / np.sqrt(1.0 - abar)
    return target(objective, x0, eps, abar)


def compare(objective="eps", spacing="leading", num_steps=10, final_sigmas_type="zero",
            lower_order_final=True, beta_schedule="linear", T=1000, outputs="denoiser",
            float64_tables=True, shape=(2, 1, 8, 8), seed=0):
    """Run both solvers side by side; returns dict(timesteps_equal, max_abs_diff, max_rel_diff,
    max_abs_x, steps).

    max_abs_diff: max over steps and pixels of |x_ours - x_diffusers| after each step;
    max_rel_diff: the same divided by max(1, max |x| of that step); max_abs_x: the largest |x|.
    """
    import torch
    from diffusers import DPMSolverMultistepScheduler

    sched = NoiseSchedule(beta_schedule, T)
    ours = DPMSolverPP2MSampler(sched, num_steps, spacing=spacing, objective=objective, clip_x0=False,
                                lower_order_final=lower_order_final, final_sigmas_type=final_sigmas_type)
    theirs = DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=sched.betas, solver_order=2, algorithm_type="dpmsolver++",
        solver_type="midpoint", prediction_type=PREDICTION_TYPE[objective], timestep_spacing=spacing,
        lower_order_final=lower_order_final, final_sigmas_type=final_sigmas_type)
    if float64_tables:  # diffusers' float32 cumprod: 1 - abar_0 = 1e-4 keeps only 3 digits
        theirs.alphas_cumprod = torch.from_numpy(sched.alphas_cumprod)
    theirs.set_timesteps(num_steps)
    their_ts = [int(t) for t in theirs.timesteps]
    result = dict(timesteps_equal=their_ts == ours.timesteps, max_abs_diff=float("nan"),
                  max_rel_diff=float("nan"), max_abs_x=0.0, steps=len(ours.timesteps))
    if not result["timesteps_equal"]:
        return result
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x_t = torch.from_numpy(x.astype(np.float32))
    pred_x0, diff, rel = None, 0.0, 0.0
    for t in ours.timesteps:
        abar = sched.alphas_cumprod[t]
        draw = rng.standard_normal(shape) if outputs == "random" else rng.uniform(-1, 1, shape)
        out = model_output(outputs, objective, x, abar, draw)
        their_out = model_output(outputs, objective, x_t.numpy().astype(np.float64), abar, draw)
        x, pred_x0 = ours.step(out, t, x, last_x0=pred_x0)
        x_t = theirs.step(torch.from_numpy(their_out.astype(np.float32)), t, x_t).prev_sample
        d = float(np.abs(x - x_t.numpy().astype(np.float64)).max())
        scale = float(np.abs(x).max())
        diff, rel = max(diff, d), max(rel, d / max(1.0, scale))
        result["max_abs_x"] = max(result["max_abs_x"], scale)
    result["max_abs_diff"], result["max_rel_diff"] = diff, rel
    return result


CASES = [dict(objective=o, spacing=sp, num_steps=n, final_sigmas_type=f, lower_order_final=lof)
         for o in ("eps", "x0", "v") for sp in ("leading", "trailing", "linspace")
         for n in (1, 2, 5, 10, 14, 20, 25, 50) for f in ("zero", "sigma_min") for lof in (True, False)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--beta_schedule", default="linear", choices=("linear", "cosine"))
    args = p.parse_args(argv)
    import diffusers
    rows = []  # (kind, case, result)
    for case in CASES:
        for kind in ("random", "denoiser"):
            rows.append((kind, case, compare(beta_schedule=args.beta_schedule, outputs=kind, **case)))
    mismatched = sorted({(c["spacing"], c["num_steps"]) for _, c, r in rows if not r["timesteps_equal"]})
    rows = [row for row in rows if row[2]["timesteps_equal"]]

    def worst(kind, key, min_steps=1):
        hits = [(r[key], c, r["max_abs_x"]) for k, c, r in rows if k == kind and c["num_steps"] >= min_steps]
        return max(hits, key=lambda h: h[0])

    def name(c):
        return (f"{c['objective']}, {c['spacing']}, S={c['num_steps']}, final {c['final_sigmas_type']}, "
                f"lower_order_final {c['lower_order_final']}")
    print(f"diffusers {diffusers.__version__}, {args.beta_schedule} betas, T=1000: {len(CASES)} cases "
          f"(eps/x0/v x 3 spacings x S in {sorted({c['num_steps'] for c in CASES})} x final sigma "
          f"zero/sigma_min x lower_order_final on/off), each with both kinds of output")
    print(f"timestep grids differ in {len(mismatched)} cases" + (f": {mismatched}" if mismatched else ""))
    rand = worst("random", "max_rel_diff")
    print(f"N(0, 1) outputs: max |x_ours - x_diffusers| / max(1, |x|) over all steps {rand[0]:.3g} "
          f"(max |x| {rand[2]:.3g}; worst case {name(rand[1])})")
    den, den5 = worst("denoiser", "max_abs_diff"), worst("denoiser", "max_abs_diff", min_steps=5)
    print(f"denoiser outputs: max |x_ours - x_diffusers| over all steps {den[0]:.3g} (worst case "
          f"{name(den[1])}); with S >= 5: {den5[0]:.3g} ({name(den5[1])})")
    return 0 if rand[0] < 1e-5 and den5[0] < 1e-5 and not mismatched else 1

if __name__ == "__main__":
    sys.exit(main())
