"""Prometheus metrics, one set per process, served at GET /metrics.

The engine updates the engine-side ones; the API updates the HTTP-side ones.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# HTTP side
REQUESTS = Counter(
    "canvasd_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "canvasd_request_seconds", "Whole request latency", ["endpoint"], buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ENCODE_SECONDS = Histogram(
    "canvasd_encode_seconds", "Resize + encode time per image", buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
REJECTED = Counter(
    "canvasd_rejected_total", "Requests refused with 429 (queue full)", registry=REGISTRY,
)

# Engine side
QUEUE_DEPTH = Gauge("canvasd_queue_depth", "Images waiting to start", registry=REGISTRY)
RUNNING_BATCH = Gauge("canvasd_running_batch", "Samples in the current step batch", registry=REGISTRY)
BATCH_SIZE = Histogram(
    "canvasd_batch_size", "Samples per denoising step", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
    registry=REGISTRY,
)
QUEUE_WAIT_SECONDS = Histogram(
    "canvasd_queue_wait_seconds", "Time from submit to first step", buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ENGINE_SECONDS = Histogram(
    "canvasd_engine_seconds", "Time from first step to finished images", buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
IMAGES_GENERATED = Counter(
    "canvasd_images_generated_total", "Images finished by the engine", ["model"], registry=REGISTRY,
)
CANCELLATIONS = Counter(
    "canvasd_cancellations_total", "Jobs ended early (client gone, timeout, shutdown, model failed to load)", ["reason"],
    registry=REGISTRY,
)
OOM_SPLITS = Counter(
    "canvasd_oom_splits_total",
    "Batches (steps, decodes, whole jobs) split and retried after running out of device memory",
    registry=REGISTRY,
)
