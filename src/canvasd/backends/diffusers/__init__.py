"""Diffusers pipelines as canvasd backends: folder inspection, devices, per-family stepwise
adapters (SD-1/2, SDXL, SD3, Flux), LoRA adapters. `DiffusersBackend` is the entry point."""

from canvasd.backends.diffusers.backend import DiffusersBackend
from canvasd.backends.diffusers.inspect import NotAPipelineError, PipelineInfo, inspect_pipeline_folder
from canvasd.backends.diffusers.stepwise import DiffusersSample

__all__ = ["DiffusersBackend", "DiffusersSample", "NotAPipelineError", "PipelineInfo", "inspect_pipeline_folder"]
