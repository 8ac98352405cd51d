"""Where the packaged weights live, and the sampling defaults of the emoji model, torch-free: the backend reads them for capabilities before
any model is loaded, the sampler uses them, and `training.train.export` writes them into a weights
folder's config.json (whose `sampling` block overrides them)."""

from pathlib import Path

# The weights shipped inside the package (the embedded model's default `path`).
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"

# quality -> DPM-Solver++(2M) steps. 64 px images converge fast; measured in MODEL_CARD.md.
QUALITY_STEPS = {"low": 8, "medium": 14, "high": 28}
DEFAULT_GUIDANCE = 5.0
# DPM-Solver++(2M) flavour: "dpmsolver++" (deterministic ODE) or "sde-dpmsolver++" (stochastic).
SOLVERS = ("dpmsolver++", "sde-dpmsolver++")
SOLVER = "dpmsolver++"
# The UNet batch can be padded to a multiple of this many rows. In fp32 on this CPU build (oneDNN)
# a row's output is bit-identical across batch sizes that are multiples of 4, but not between
# 1, 2 and 4 rows (GEMV vs GEMM kernels), so padding to 4 makes an image's bytes nearly independent
# of its batch mates. It costs a lone image 40% per step (measured: 2 rows 26.5 ms, 4 rows 37.7 ms),
# which is most requests on a small server, so it is off: the same seed alone gives the same bytes;
# batched with others, pixels may differ by a few levels. `sampling.row_multiple: 4` in a weights
# folder's config.json turns it on.
ROW_MULTIPLE = 1
# Sampler grid moved towards high noise by this factor (`model.shift_timesteps`); a weights folder
# trained with `--timestep-shift S` sets `sampling.timestep_shift: S`. 1 = diffusers' uniform grid.
TIMESTEP_SHIFT = 1.0
# Classifier-free guidance only at timesteps >= this (a guidance interval, Kynkäänniemi et al.
# 2024): at low noise the silhouette is settled and guidance only sharpens per-pixel speckle, at
# twice the UNet rows. 0 = guide every step; a weights folder's `sampling.guidance_min_timestep`
# overrides it.
GUIDANCE_MIN_TIMESTEP = 0

# A weights folder's second stage (`upsampler.py`): a subfolder with its own config.json and
# model.safetensors. Without it the model is one-stage (64 px, fitted to the requested size).
UPSAMPLER_SUBDIR = "upsampler"


def upsampler_dir(weights_dir: Path) -> Path | None:
    folder = Path(weights_dir) / UPSAMPLER_SUBDIR
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    return None
