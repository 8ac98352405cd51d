"""`canvasd train ...` and `canvasd eval ...`: the embedded model's training and evaluation.

The work is done by the library functions of `canvasd.training`; this module only maps options to
their arguments. Defaults that belong to the recipe (learning rate, batch size, ...) stay in
`TrainConfig`: an option left out is not passed on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer

from canvasd.cli.common import CommandError, new_app, require_extra

if TYPE_CHECKING:  # pragma: no cover
    from canvasd.training.train import TrainConfig

DEFAULT_BUDGET_MINUTES = 60.0  # a run with no budget of its own: long enough to be useful, bounded

train_app = new_app("Train the embedded model: `canvasd train` runs (or resumes) a training run; "
                    "`train data` builds the dataset; `train export` writes weights from a checkpoint.",
                    invoke_without_command=True)
eval_app = new_app("Evaluate the embedded model's weights.", no_args_is_help=True)

DataDir = Annotated[Path, typer.Option(help="Dataset folder (built by `canvasd train data`).")]
DataName = Annotated[str, typer.Option(help="Dataset name inside the folder.")]


def _packaged_weights() -> Path:
    from canvasd.cli.common import embedded_weights_dir

    return embedded_weights_dir()


@train_app.callback()
def train(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Run name: runs/<name>/ holds its checkpoint, log and weights; "
                                      "running again with the same name resumes.")] = "emoji64",
    max_minutes: Annotated[Optional[float], typer.Option(
        help=f"Training-time budget (default {DEFAULT_BUDGET_MINUTES:g} when --max-steps is not given either).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Step budget.")] = None,
    data_dir: DataDir = Path("data"),
    data_name: DataName = "emoji64",
    runs_dir: Annotated[Path, typer.Option(help="Folder of the runs.")] = Path("runs"),
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (default: the recipe's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the recipe's).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the run.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads.")] = None,
    ckpt_every_minutes: Annotated[Optional[float], typer.Option(help="Checkpoint interval.")] = None,
    augment_p: Annotated[Optional[float], typer.Option(help="Probability of scale/shift augmentation.")] = None,
    hflip: Annotated[Optional[bool], typer.Option("--hflip/--no-hflip", help="Random horizontal flips.")] = None,
    prediction_type: Annotated[Literal["sample", "v_prediction"], typer.Option(
        help="What the UNet predicts: the clean image, or v.")] = "sample",
    sample_snr_cap: Annotated[Optional[float], typer.Option(
        help="prediction-type sample: x-MSE weighted by min(snr, cap) + 1.")] = None,
    min_snr_gamma: Annotated[Optional[float], typer.Option(
        help="v_prediction: min-SNR loss weighting (default: plain v-MSE).")] = None,
    high_noise_p: Annotated[Optional[float], typer.Option(
        help="Fraction of timesteps drawn from the noisier half [T/2, T).")] = None,
    timestep_shift: Annotated[Optional[float], typer.Option(
        help="Shift training timesteps to higher noise by this factor; exported as the sampler's.")] = None,
    p_name: Annotated[Optional[float], typer.Option(help="Probability of captioning with the concept's name.")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="Linear warmup steps.")] = None,
    finetune_from: Annotated[Optional[Path], typer.Option(
        help="Start a new run from this checkpoint (ckpt.pt or a weights folder) with a fresh schedule.")] = None,
    bf16: Annotated[Optional[bool], typer.Option(
        "--bf16/--no-bf16", help="bf16 autocast (default: where the CPU has native bf16 kernels).")] = None,
    tiny: Annotated[bool, typer.Option(help="A tiny model, for trying the pipeline in seconds.")] = False,
    export_to: Annotated[Optional[Path], typer.Option(
        help="Weights folder written at the end (default runs/<name>/weights).")] = None,
    guidance_min_timestep: Annotated[Optional[int], typer.Option(
        help="Exported sampler setting: classifier-free guidance only at timesteps >= this.")] = None,
) -> None:
    """Train (or resume) the embedded model; the dataset is built first when missing."""
    if ctx.invoked_subcommand is not None:
        # `canvasd train --max-steps 5 export ...`: the run's options would be silently ignored
        given = [n for n in ctx.params if ctx.get_parameter_source(n).name != "DEFAULT"]
        if given:
            raise CommandError(f"--{given[0].replace('_', '-')} is an option of the training run, "
                               f"not of `canvasd train {ctx.invoked_subcommand}`")
        return
    require_extra("train")
    cfg = train_config(
        tiny=tiny, prediction_type=prediction_type, name=name, data_dir=data_dir, data_name=data_name,
        runs_dir=runs_dir, max_minutes=max_minutes, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed,
        threads=threads, ckpt_every_minutes=ckpt_every_minutes, augment_p=augment_p, hflip=hflip,
        sample_snr_cap=sample_snr_cap, min_snr_gamma=min_snr_gamma, high_noise_p=high_noise_p,
        timestep_shift=timestep_shift, p_name=p_name, warmup_steps=warmup_steps, finetune_from=finetune_from,
        bf16=bf16)
    from canvasd.training.data import build_dataset
    from canvasd.training.train import train as run_training

    typer.echo(f"dataset: {build_dataset(data_dir)}")
    extra: dict[str, Any] = {} if guidance_min_timestep is None else {"guidance_min_timestep": guidance_min_timestep}
    run_training(cfg, export_to=export_to, **extra)


def train_config(*, tiny: bool = False, prediction_type: str = "sample", **options: Any) -> "TrainConfig":
    """The run's `TrainConfig` from the options given (None: the recipe's default), with the
    default time budget when neither a time nor a step budget is given."""
    from canvasd.training.train import TrainConfig

    given = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None}
    if "max_minutes" not in given and "max_steps" not in given:
        given["max_minutes"] = DEFAULT_BUDGET_MINUTES
    cfg = TrainConfig.tiny(**given) if tiny else TrainConfig(**given)
    cfg.model.prediction_type = prediction_type
    return cfg


@train_app.command("data")
def train_data(
    data_dir: DataDir = Path("data"),
    limit: Annotated[Optional[int], typer.Option(help="Only the first N concepts (a quick, small dataset).")] = None,
    size: Annotated[int, typer.Option(help="Image side: 64 for the first stage, 256 for the second "
                                      "(emoji<size>.npz; above 136 px the font's bitmaps are left out).")] = 64,
) -> None:
    """Build the emoji dataset (cached: a second run reuses it)."""
    require_extra("train")
    from canvasd.training.data import build_dataset
    from canvasd.training.train_upsampler import sources_for_size

    typer.echo(f"dataset: {build_dataset(data_dir, size=size, limit=limit, sources=sources_for_size(size))}")


@train_app.command("upsampler")
def train_upsampler_cmd(
    name: Annotated[str, typer.Option(help="Run name: runs/<name>/ holds its checkpoint, log and weights; "
                                      "running again with the same name resumes.")] = "up256",
    max_minutes: Annotated[Optional[float], typer.Option(
        help=f"Training-time budget (default {DEFAULT_BUDGET_MINUTES:g} when --max-steps is not given either).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Step budget.")] = None,
    data_dir: DataDir = Path("data"),
    runs_dir: Annotated[Path, typer.Option(help="Folder of the runs.")] = Path("runs"),
    first_stage: Annotated[Optional[Path], typer.Option(
        help="First-stage weights whose samples the stage learns to refine (default: the packaged weights).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Crops per step (default: the recipe's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the recipe's).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the run.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads.")] = None,
    tiny: Annotated[bool, typer.Option(help="A tiny network, for trying the pipeline in seconds.")] = False,
    export_to: Annotated[Optional[Path], typer.Option(
        help="Folder written at the end (default runs/<name>/weights; the packaged model's is "
             "src/canvasd/backends/emoji/weights/upsampler).")] = None,
) -> None:
    """Train (or resume) the second stage (64 -> 256 px) on the 256 px dataset, built first when missing."""
    require_extra("train")
    from canvasd.training.data import build_dataset
    from canvasd.training.train_upsampler import UpsamplerTrainConfig, sources_for_size, train_upsampler

    given = {k: str(v) if isinstance(v, Path) else v for k, v in dict(
        name=name, max_minutes=max_minutes, max_steps=max_steps, data_dir=data_dir, runs_dir=runs_dir,
        first_stage=first_stage, batch_size=batch_size, lr=lr, seed=seed, threads=threads).items() if v is not None}
    if "max_minutes" not in given and "max_steps" not in given:
        given["max_minutes"] = DEFAULT_BUDGET_MINUTES
    cfg = UpsamplerTrainConfig.tiny(**given) if tiny else UpsamplerTrainConfig(**given)
    typer.echo(f"dataset: {build_dataset(data_dir, size=cfg.model.out_size, sources=sources_for_size(cfg.model.out_size))}")
    train_upsampler(cfg, export_to=export_to)


@train_app.command("export")
def train_export(
    checkpoint: Annotated[Path, typer.Argument(help="A run's ckpt.pt.", exists=True, dir_okay=False)],
    to: Annotated[Optional[Path], typer.Option(help="Weights folder to write (default: the packaged weights).")] = None,
    guidance_min_timestep: Annotated[Optional[int], typer.Option(
        help="Sampler setting written with the weights: classifier-free guidance only at timesteps >= this.")] = None,
) -> None:
    """Write a checkpoint's EMA weights as a weights folder (no dataset needed)."""
    from canvasd.training.train import export

    import pickle

    extra: dict[str, Any] = {} if guidance_min_timestep is None else {"guidance_min_timestep": guidance_min_timestep}
    try:
        typer.echo(str(export(checkpoint, to or _packaged_weights(), **extra)))
    except (EOFError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:  # what torch.load raises
        raise CommandError(f"{checkpoint}: not a canvasd training checkpoint ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------------ eval ----
Weights = Annotated[Optional[Path], typer.Option(help="Weights folder (default: the packaged weights).")]
Quality = Annotated[Literal["low", "medium", "high"], typer.Option(help="Sampling quality (steps).")]
Guidance = Annotated[Optional[float], typer.Option(help="Guidance scale (default: the model's).")]
Threads = Annotated[int, typer.Option(help="Torch threads.")]


def _eval_setup(threads: int, data_dir: Path | None = None, data_name: str = "emoji64") -> None:
    if data_dir is not None and not (data_dir / f"{data_name}.npz").exists():
        size = data_name.removeprefix("emoji")
        raise CommandError(f"no dataset {data_name!r} in {data_dir}: build it with `canvasd train data "
                           f"--data-dir {data_dir}" + (f" --size {size}`" if size != "64" else "`"))
    import torch

    torch.set_num_threads(threads)


@eval_app.command("report")
def eval_report(
    weights: Weights = None,
    data_dir: DataDir = Path("data"),
    data_name: DataName = "emoji64",
    out: Annotated[Path, typer.Option(help="Folder for the report's sheets.")] = Path("runs/eval"),
    max_heldout: Annotated[int, typer.Option(help="Held-out images scored.")] = 256,
    quality: Quality = "medium",
    guidance: Guidance = None,
    threads: Threads = 2,
    speed: Annotated[bool, typer.Option("--speed/--no-speed", help="Also time generation.")] = True,
) -> None:
    """Concept accuracy, diversity, contact sheet and speed (markdown on stdout)."""
    _eval_setup(threads, data_dir, data_name)
    from canvasd.training.eval import evaluate, to_markdown

    r = evaluate(weights or _packaged_weights(), data_dir, out, data_name, max_heldout, quality=quality,
                 guidance=guidance, speed=speed)
    typer.echo(to_markdown(r))


@eval_app.command("detail")
def eval_detail(
    weights: Weights = None,
    data_dir: DataDir = Path("data"),
    out: Annotated[Path, typer.Option(help="Folder for detail.json, detail.md and the 512 px sheet.")] = Path("runs/eval-detail"),
    max_images: Annotated[int, typer.Option(help="Held-out 256 px renders used.")] = 128,
    seeds: Annotated[int, typer.Option(help="Seeds per paraphrase prompt.")] = 2,
    quality: Quality = "medium",
    level: Annotated[Optional[float], typer.Option(
        help="Degradation level the second stage is told (default: its weights').")] = None,
    threads: Threads = 2,
    speed: Annotated[bool, typer.Option("--speed/--no-speed", help="Also time a 1024 px answer, one stage vs two.")] = True,
) -> None:
    """The second stage: detail against the real art, concepts and speed, one stage vs two (markdown)."""
    _eval_setup(threads, data_dir, "emoji256")
    from canvasd.training.detail import detail_markdown, evaluate_detail

    try:
        r = evaluate_detail(weights or _packaged_weights(), data_dir, out, max_images, seeds, quality, level, speed=speed)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    typer.echo(detail_markdown(r))


@eval_app.command("sheet")
def eval_sheet(
    png: Annotated[Path, typer.Argument(help="Contact sheet to write.")],
    weights: Weights = None,
    quality: Quality = "medium",
    guidance: Guidance = None,
    threads: Threads = 2,
) -> None:
    """A contact sheet of the paraphrase prompts (no dataset needed)."""
    _eval_setup(threads)
    from canvasd.training.eval import sheet_only

    typer.echo(str(sheet_only(weights or _packaged_weights(), png, quality, guidance)))


@eval_app.command("recon")
def eval_recon(
    png: Annotated[Path, typer.Argument(help="Reconstruction sheet to write.")],
    weights: Weights = None,
    data_dir: DataDir = Path("data"),
    data_name: DataName = "emoji64",
    threads: Threads = 2,
) -> None:
    """Clean-image predictions of noised training images (a denoising check), with their MSE."""
    _eval_setup(threads, data_dir, data_name)
    from canvasd.training.eval import reconstruction_sheet

    mse = reconstruction_sheet(weights or _packaged_weights(), data_dir, png, data_name)
    typer.echo(json.dumps({"sheet": str(png), "mse_by_timestep": mse}))


@eval_app.command("probe")
def eval_probe(
    png: Annotated[Path, typer.Argument(help="Probe sheet to write.")],
    probe: Annotated[Optional[list[str]], typer.Option(
        metavar="PROMPT=NAME|NAME", help="A prompt and the concepts accepted as its nearest (repeatable; "
        "default: the apples).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1 per prompt.")] = 16,
    weights: Weights = None,
    data_dir: DataDir = Path("data"),
    data_name: DataName = "emoji64",
    quality: Quality = "medium",
    guidance: Guidance = None,
    threads: Threads = 2,
) -> None:
    """Generate seeds 0..N-1 of probe prompts and count how often each lands on its concept."""
    _eval_setup(threads, data_dir, data_name)
    from canvasd.training.eval import parse_probe, seed_probe

    prompts = [parse_probe(p) for p in probe] if probe else None
    r = seed_probe(weights or _packaged_weights(), data_dir, png, data_name, prompts, seeds, quality, guidance)
    typer.echo(json.dumps(r, indent=2))
