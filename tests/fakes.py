"""Test doubles shared by the test files: torch-free fake backends (see canvasd.backends.fake).

FakeBackend: stepwise; `batches` records every step() call as [(job.id, sample.index, step)];
`step_s`/`per_sample_s` slow it, `pause_at(k)`/`resume()` hold the worker inside the k-th step,
`fail_when(samples)` makes a step raise. Images: solid RGBA colours from the seed.
FakeWholeJobBackend: non-stepwise (only `run`).
"""

from canvasd.backends.fake import (  # noqa: F401 - re-exported for tests
    FakeBackend,
    FakeSample,
    FakeWholeJobBackend,
    seed_colour,
    solid_image,
    steps_for,
)
