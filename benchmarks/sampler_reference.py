"""Make tests/engine/sampler_reference.npz: diffusers' schedulers' trajectories on a
synthetic noise prediction, which tests/engine/test_samplers.py compares sdgen's samplers
(sdgen/engine/samplers.py) with, step by step.

Why a committed file and not torch + diffusers as test dependencies: they are ~1 GB of wheels
(torch alone several hundred MB even for the CPU) and tens of seconds of import per CI run,
for a reference that changes only when diffusers changes its schedulers. The file is a few
hundred KB; this script remakes it. The committed one: diffusers 0.42.1, torch 2.14.1 (CPU).

It installs nothing. Run it with a Python that has torch, diffusers and numpy, e.g.

    python3 -m venv /tmp/ref
    /tmp/ref/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/ref/bin/pip install diffusers numpy          # (or torch from PyPI)
    /tmp/ref/bin/python benchmarks/sampler_reference.py

keras-cv's cumulative alpha table (what sdgen samples with) is read through the repository's
own Python (`--sdgen-python`, default .venv/bin/python), since the reference environment has
no keras-cv; each diffusers scheduler gets that table in place of its own float32 cumprod
of the same betas (they differ by up to 5e-7: keras-cv's constants are rounded).

Schedulers are configured as a Stable Diffusion v1 pipeline configures them: each built with
`from_config` of SD v1.4's scheduler_config.json (below), plus `use_karras_sigmas=True` for
DPM++ 2M Karras; everything else is that diffusers version's default.

The synthetic model: eps = tanh(0.8 * x + 0.6 * t / 1000 - 0.3), elementwise, on a 1x8x8x4
latent (x: what the scheduler hands the model, after scale_model_input; t: the timestep it
is called with). Euler ancestral's per-step noise comes from a fixed numpy generator (the
scheduler's randn_tensor is replaced for the run) and is stored beside the trajectory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "engine" / "sampler_reference.npz"
STEPS = (20, 25)
SHAPE = (1, 8, 8, 4)  # NHWC, as sdgen holds latents; diffusers gets NCHW
A, B, C = 0.8, 0.6, -0.3

# huggingface.co/CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json
SD_V1_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}


def keras_cv_alphas(python: str) -> np.ndarray:
    code = (
        "import sys, numpy as np;"
        "from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD as A;"
        "np.save(sys.stdout.buffer, np.asarray(A, np.float32))"
    )
    out = subprocess.run([python, "-c", code], check=True, capture_output=True).stdout
    import io

    return np.load(io.BytesIO(out))


def schedulers(diffusers):
    return {
        "ddim": lambda: diffusers.DDIMScheduler.from_config(SD_V1_SCHEDULER),
        "euler": lambda: diffusers.EulerDiscreteScheduler.from_config(SD_V1_SCHEDULER),
        "euler_a": lambda: diffusers.EulerAncestralDiscreteScheduler.from_config(SD_V1_SCHEDULER),
        "dpmpp_2m": lambda: diffusers.DPMSolverMultistepScheduler.from_config(SD_V1_SCHEDULER),
        "dpmpp_2m_karras": lambda: diffusers.DPMSolverMultistepScheduler.from_config(
            SD_V1_SCHEDULER, use_karras_sigmas=True
        ),
    }


def run(name, make, steps, alphas, noise, torch):
    sched = make()
    ac = torch.from_numpy(alphas)
    sched.alphas_cumprod = ac
    if hasattr(sched, "final_alpha_cumprod") and not sched.config.set_alpha_to_one:
        sched.final_alpha_cumprod = ac[0]
    sched.set_timesteps(steps)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    nhwc = lambda t: t.detach().numpy().transpose(0, 2, 3, 1).copy()  # noqa: E731

    rng = np.random.default_rng(1)
    step_noise = [rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(steps)]
    drawn = []

    def fake_randn(shape, generator=None, device=None, dtype=None, **_):
        drawn.append(step_noise[len(drawn)])
        return nchw(drawn[-1]).to(dtype or torch.float32)

    if name == "euler_a":
        import diffusers.schedulers.scheduling_euler_ancestral_discrete as mod

        mod.randn_tensor = fake_randn
    sample = nchw(noise) * sched.init_noise_sigma
    xs, model_ts = [nhwc(sample)], []
    for t in sched.timesteps:
        x_in = sched.scale_model_input(sample, t)
        eps = torch.tanh(A * x_in + B * (t.to(torch.float32) / 1000) + C)
        sample = sched.step(eps, t, sample).prev_sample
        xs.append(nhwc(sample))
        model_ts.append(float(t))
    out = {"x": np.stack(xs), "timesteps": np.asarray(model_ts, np.float64)}
    if hasattr(sched, "sigmas") and name != "ddim":
        out["sigmas"] = sched.sigmas.numpy().astype(np.float32)
    if name == "euler_a":
        assert len(drawn) == steps
        out["noise"] = np.stack(drawn)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdgen-python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    try:
        import diffusers
        import torch
    except ImportError:
        sys.exit("needs torch and diffusers (see this script's docstring); installs nothing itself")
    alphas = keras_cv_alphas(args.sdgen_python)
    noise = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    arrays = {
        "alphas_cumprod": alphas,
        "initial_noise": noise,
        "model": np.asarray([A, B, C], np.float32),
        "diffusers_version": np.asarray(diffusers.__version__),
        "torch_version": np.asarray(torch.__version__),
    }
    for name, make in schedulers(diffusers).items():
        for steps in STEPS:
            for key, value in run(name, make, steps, alphas, noise, torch).items():
                arrays[f"{name}/{steps}/{key}"] = value
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {Path(args.out).stat().st_size} bytes, diffusers {diffusers.__version__}")


if __name__ == "__main__":
    main()
