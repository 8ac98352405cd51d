"""Every canvasd setting, declared once: its type, default and help text.

The CLI flags of `canvasd serve` (canvasd.cli), the `CANVASD_<NAME>` environment variables and the
TOML keys are all derived from the fields below, so a setting cannot exist under one name and be
missing under another. `load_settings` layers the sources, lowest first:

    defaults < TOML file (--config / CANVASD_CONFIG) < environment (CANVASD_*) < CLI flags

A setting is taken whole from the highest source that sets it (a list given by a flag replaces the
file's list), except the `aliases` table, which is merged name by name. Any wrong value or unknown
key is a `SettingsError` whose one-line message names the key and where it came from.

One `Settings` object is built at startup and handed to the app factory; nothing reads the
environment after that. Constructing `Settings(...)` directly (tests, the benchmark) reads no
source at all: only `load_settings` does.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from canvasd.backends.diffusers.device import check_device
from canvasd.backends.precision import Precision

# OpenAI model names accepted as aliases. By default each maps to the default (first) local model;
# `[aliases]` in the config file or `--alias gpt-image-1=mymodel` maps them elsewhere.
OPENAI_ALIASES = (
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "gpt-image-2.5-sunburst",
    "gpt-image-2.5-sunburst-2026-09-08",
    "gpt-image-2.5-flare",
    "gpt-image-2.5-flare-2026-09-08",
    "gpt-image-2.6-sunburst",
    "gpt-image-2.6-flare",
    "chatgpt-image-latest",
    "dall-e-2",
    "dall-e-3",
)

EMBEDDED_MODEL_ID = "canvasd-emoji"
ENV_PREFIX = "CANVASD_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"  # the TOML file's path; the one CANVASD_* name that is no field

Compat = Literal["permissive", "strict"]
BackendName = Literal["emoji", "diffusers"]


Device = Annotated[str, AfterValidator(check_device)]  # the diffusers backend's rule (torch-free)
Dtype = Literal["auto", "bf16", "fp16", "fp32"]
Offload = Literal["none", "model", "sequential"]
VaeTiling = Literal["auto", "on", "off"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class SettingsError(ValueError):
    """A setting that cannot be used; the message is one line naming the key and its source."""


@dataclass(frozen=True)
class Flag:
    """CLI spelling of a list or table setting: a repeatable singular flag (`--api-key K`), and
    the shape of one item for its help text."""

    name: str
    item: str
    short: str | None = None


# ------------------------------------------------------------------------------------ models --
class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name a request selects the adapter by.")
    path: Path = Field(description="Local .safetensors file.")
    scale: float = Field(1.0, description="Adapter weight.")


def split_model_arg(arg: str) -> dict[str, str | None]:
    """`name=/path[,key=value...]` (the --model flag, and the string form in CANVASD_MODELS) as
    the keys of one `ModelSettings`. A path that contains a comma needs the TOML file."""
    head, *rest = arg.split(",")
    if "=" not in head or not head.split("=", 1)[0]:
        raise ValueError(f"expected name=/path[,key=value...], got {arg!r}")
    name, path = head.split("=", 1)
    out = {"id": name, "path": path or None}  # `name=` alone: the packaged embedded weights
    for item in rest:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"expected key=value after the path, got {item!r} in {arg!r}")
        if key in out:
            raise ValueError(f"{key!r} given twice in {arg!r}")
        out[key] = value.strip()
    return out


def model_from_arg(arg: str, source: str = "--model") -> ModelSettings:
    """One `--model name=/path[,key=value...]` as validated settings."""
    try:
        return ModelSettings(**split_model_arg(arg))
    except ValidationError as exc:
        raise SettingsError(_describe(exc, {}, prefix=f"{source} {arg}")) from None
    except ValueError as exc:  # not even name=/path
        raise SettingsError(f"{source}: {exc}") from None


def infer_backend(path: Path) -> BackendName:
    if (path / "model_index.json").exists():
        return "diffusers"
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        return "emoji"
    raise ValueError(
        f"{path} is neither a diffusers pipeline folder (no model_index.json) "
        "nor a canvasd emoji weights folder (config.json + model.safetensors)"
    )


class ModelSettings(BaseModel):
    """One local model (`[[models]]` in TOML, `--model` on the CLI)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str = Field(min_length=1, description="Name requests use in `model`.")
    backend: BackendName | None = Field(
        None, description="emoji or diffusers; inferred from the folder when omitted.")
    path: str | None = Field(
        None, description="diffusers: the pipeline folder; emoji: a weights folder (none: the packaged weights).")
    device: Device = Field("auto", description="Device the model runs on (auto: the backend's choice).")
    dtype: Dtype = Field("auto", description="Dtype of the weights on the device.")
    offload: Offload = Field("none", description="diffusers' CPU offload of the model's parts.")
    vae_tiling: VaeTiling = Field("auto", description="VAE tiling (auto: above a size where the decoder would not fit).")
    preload: bool | None = Field(None, description="Load at start (none: only the first model).")
    loras: list[LoraSettings] = Field(
        default_factory=list, description="LoRA adapters: tables of name, path (.safetensors) and scale.")
    replicas: int | None = Field(None, ge=1, description="Ray Serve: fixed replica count.")
    min_replicas: int | None = Field(None, ge=0, description="Ray Serve autoscaling: fewest replicas.")
    max_replicas: int | None = Field(None, ge=1, description="Ray Serve autoscaling: most replicas.")
    num_cpus: float | None = Field(None, gt=0, description="Ray Serve: CPUs per replica.")
    num_gpus: float | None = Field(None, ge=0, description="Ray Serve: GPUs per replica.")

    @model_validator(mode="after")
    def _infer_backend(self) -> "ModelSettings":
        if self.backend is None:
            inferred = infer_backend(Path(self.path).expanduser()) if self.path else "emoji"
            object.__setattr__(self, "backend", inferred)  # not through validate_assignment again
        return self


def _model_items(value: Any) -> Any:
    """Models as TOML tables, dicts, or `name=/path[,key=value...]` strings (several in one
    environment variable: a JSON list, or separated by `;`)."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [v for v in text.split(";") if v.strip()]
    if isinstance(value, list):
        return [split_model_arg(v.strip()) if isinstance(v, str) else v for v in value]
    return value


def _memory_size(value: Any) -> Any:
    """`24GiB`, `16 GB` or a byte count (canvasd.backends.memory.parse_bytes)."""
    if value is None or value == "":
        return None
    from canvasd.backends.memory import parse_bytes

    return parse_bytes(value)


def _string_list(value: Any) -> Any:
    """A list, or one comma-separated string (`CANVASD_API_KEYS=k1,k2`), or a JSON list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [v.strip() for v in text.split(",") if v.strip()]
    return value


def _check_networks(entries: list[str]) -> list[str]:
    for entry in entries:
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address, a CIDR network or *") from None
    return entries


def _name_table(value: Any) -> Any:
    """A table, or `a=b` items (one comma-separated string, or a list of them), or a JSON object."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        value = [v for v in text.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        table = {}
        for item in value:
            key, sep, target = str(item).partition("=")
            if not sep or not key.strip() or not target.strip():
                raise ValueError(f"expected openai-name=local-model, got {item!r}")
            table[key.strip()] = target.strip()
        return table
    return value


# ---------------------------------------------------------------------------------- server ----
class Settings(BaseSettings):
    """The server's settings. Field order is the order of `canvasd serve --help`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_assignment=True,
                                      validate_default=True)

    models: Annotated[list[ModelSettings], NoDecode, BeforeValidator(_model_items),
                      Flag("--model", "name=/path[,key=value...]", short="-m")] = Field(
        default_factory=lambda: [ModelSettings(id=EMBEDDED_MODEL_ID, backend="emoji")], min_length=1,
        description="Local models: a diffusers pipeline folder (model_index.json) or an emoji weights "
        "folder; the first is the default.")
    aliases: Annotated[dict[str, str], NoDecode, BeforeValidator(_name_table),
                       Flag("--alias", "openai-name=local-model")] = Field(
        default_factory=dict,
        description="OpenAI model names mapped to local models (every OpenAI name maps to the first "
        "model unless mapped here).")
    api_keys: Annotated[list[str], NoDecode, BeforeValidator(_string_list), Flag("--api-key", "KEY")] = Field(
        default_factory=list,
        description="Accepted `Authorization: Bearer` keys, compared in constant time (none: open, "
        "with a startup warning).")
    compat: Compat = Field("permissive", description="permissive, or strict (the real API's refusals).")
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=0, le=65535, description="Port.")
    public_base_url: str | None = Field(
        None, description="Base of `url` responses (none: from the request's Host).")
    forwarded_allow_ips: Annotated[list[str], NoDecode, BeforeValidator(_string_list),
                                   AfterValidator(_check_networks),
                                   Flag("--forwarded-allow-ip", "IP-or-CIDR")] = Field(
        default_factory=list,
        description="Proxies (IPs, CIDR networks, * for any) whose X-Forwarded-Host/-Proto/-Prefix "
        "set the base of `url` responses (none: forwarded headers are ignored).")
    url_ttl_s: int = Field(3600, gt=0, description="Lifetime of signed image URLs, seconds.")
    image_dir: Path = Field(Path(".canvasd/images"), description="Where `url` images are stored; expired files are swept.")
    url_secret: str | None = Field(
        None, description="HMAC key of signed URLs (none: random per process, so URLs die with it).")
    max_queue: int = Field(64, ge=1, description="Images waiting before requests get 429.")
    max_batch: int = Field(8, ge=1, description="Samples per denoising step.")
    batching: bool = Field(True, description="Step-level batching across requests (off: one job at a time).")
    request_timeout_s: float = Field(600.0, gt=0, description="Per-request deadline, seconds.")
    torch_threads: int | None = Field(None, ge=1, description="Torch intra-op threads (none: all usable cores).")
    # "auto" = bf16 autocast where the CPU has native bf16 kernels, else fp32 (canvasd.backends.precision).
    precision: Precision = Field("auto", description="Denoiser arithmetic: auto (bf16 where the CPU has native "
                                 "bf16 kernels, else fp32), fp32 or bf16.")
    # Models on demand (canvasd.backends.registry): a load that would go over a device's limit first
    # unloads that device's least recently used model, after its running jobs.
    max_loaded_models: int | None = Field(
        None, ge=1, description="Most models loaded at once on one device (none: no limit).")
    device_memory_budget: Annotated[int | None, BeforeValidator(_memory_size)] = Field(
        None, description="Bytes of model weights one device may hold, e.g. 40GiB or 16GB (none: no "
        "limit); estimated from the weight files before a model's first load, measured after it.")
    # Each render thread takes a core from the engine's torch threads, hence few.
    render_threads: int | None = Field(
        None, ge=1, description="Images fitted/encoded at once (none: half the cores, at least 1).")
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Largest uploaded image, bytes.")
    max_upload_pixels: int = Field(
        4096 * 4096, ge=1, description="Most pixels of one uploaded image (decompression-bomb guard).")
    # Several servers (Ray ingress replicas) read one store: canvasd.media.store.open_store.
    image_store: str | None = Field(
        None, description="Where `url` images live: file:///dir or s3://bucket/prefix (none: image_dir).")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible server of an s3:// image_store: MinIO, Ceph, R2... (none: AWS).")
    s3_presigned_urls: bool = Field(
        False, description="Answer `url` requests with the bucket's own presigned URLs (s3:// image_store).")
    # Ray Serve (canvasd.serve.ray): `replicas` or `ray_address` switches `canvasd serve` from this
    # process to an ingress + engine replicas deployment; models may override `replicas`.
    replicas: int | None = Field(
        None, ge=1, description="Ray Serve: engine replicas per model on a local Ray (pip install canvasd[ray]).")
    ray_address: str | None = Field(
        None, description="Ray Serve: deploy onto this Ray cluster (auto, ray://host:10001...; or RAY_ADDRESS).")
    ingress_replicas: int = Field(1, ge=1, description="Ray Serve: copies of the API app (they hold no model).")
    ray_object_store_mb: int = Field(
        256, ge=64, description="Ray Serve: object store of a local Ray, MB (images in flight only).")
    max_request_pixels: int = Field(
        4096 * 4096, ge=1, description="Most pixels of all uploaded images of one request together, "
        "counted from their headers before any is decoded.")
    decode_threads: int = Field(
        2, ge=1, description="Requests whose uploads are decoded at once (each holds up to "
        "max_request_pixels decoded pixels).")
    sse_keepalive_s: float = Field(
        15.0, gt=0, description="A `: keepalive` comment goes out in a stream idle this long, seconds.")
    # a container's grace period is usually 30 s: the default leaves room for a step in progress,
    # the error responses and the exit
    shutdown_timeout_s: float = Field(
        20.0, ge=0, description="On SIGTERM, running jobs get this long to finish, then are "
        "cancelled with an OpenAI error; seconds.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection's request head must be complete within this, seconds.")
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the next chunk of a request body (then 408), seconds.")
    keepalive_timeout_s: float = Field(5.0, gt=0, description="Idle keep-alive connections close after this, seconds.")
    max_connections: int = Field(1000, ge=1, description="Open connections; beyond, 503 and close.")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="Request line and headers, bytes.")
    log_level: LogLevel = Field("info", description="Log level of canvasd and uvicorn.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # Only the constructor's arguments: `load_settings` layers file, environment and flags
        # itself so that every error can name its source.
        return (init_settings,)

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, models: list[ModelSettings]) -> list[ModelSettings]:
        ids = [m.id for m in models]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"model id {dupes[0]!r} is configured twice")
        return models

    @field_validator("aliases")
    @classmethod
    def _aliases_name_models(cls, aliases: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if "models" not in info.data:  # the models were refused: nothing to check against
            return aliases
        ids = [m.id for m in info.data["models"]]
        for name, target in aliases.items():
            if target not in ids:
                raise ValueError(f"{name!r} maps to {target!r}, which is not a configured model ({', '.join(ids)})")
        return aliases

    @property
    def scale_out(self) -> bool:
        """Serve through Ray Serve rather than in this process."""
        return bool(self.replicas or self.ray_address)

    @property
    def default_model(self) -> str:
        return self.models[0].id

    def resolve_alias(self, name: str) -> str | None:
        """Local model id for a request's `model`, or None when unknown."""
        if any(m.id == name for m in self.models):
            return name
        if name in self.aliases:
            return self.aliases[name]
        if name in OPENAI_ALIASES and self.models:
            return self.default_model
        return None


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_of(field: str) -> Flag | None:
    """The repeatable flag a list/table field declares, if any."""
    info = Settings.model_fields.get(field)
    return next((m for m in info.metadata if isinstance(m, Flag)), None) if info else None


def flag_name(field: str) -> str:
    flag = flag_of(field)
    return flag.name if flag else "--" + field.replace("_", "-")


# --------------------------------------------------------------------------------- loading ----
def load_settings(config_file: str | Path | None = None, flags: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults < TOML file (`config_file`, else $CANVASD_CONFIG) < environment < `flags`.

    `flags` maps field names to values given on the command line (None / empty: not given).
    Raises `SettingsError` with a one-line message naming the key and its source."""
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, dict[str, Any], Any]] = []  # (source, values, key -> label)

    path = config_file or environ.get(CONFIG_ENV)
    if path:
        layers.append((str(path), _read_toml(Path(path)), lambda key, p=str(path): f"{p}: {key}"))
    layers.append(("environment", _read_env(environ), env_name))
    given = {k: v for k, v in (flags or {}).items() if v is not None and v != [] and v != ()}
    layers.append(("flags", given, flag_name))

    merged: dict[str, Any] = {}
    label: dict[str, Any] = {}
    for _, values, name_of in layers:
        for key, value in values.items():
            if key not in Settings.model_fields:
                raise SettingsError(f"{name_of(key)}: unknown setting{_suggestion(key)}")
            if key == "aliases" and key in merged:  # tables merge name by name across sources
                merged[key] = {**_table_or_raw(merged[key]), **_table_or_raw(value)}
            else:
                merged[key] = value
            label[key] = name_of
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, label)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read config file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from None


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """CANVASD_<FIELD> values, through pydantic-settings' own reader (prefix, case rules)."""
    source = EnvSettingsSource(Settings)
    source.env_vars = {k.lower(): v for k, v in environ.items()}  # the mapping given, not os.environ
    try:
        return {key: value for key, value in source().items() if key in Settings.model_fields}
    except Exception as exc:  # pydantic-settings' SettingsError: a value it could not decode
        raise SettingsError(str(exc).splitlines()[0]) from None


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """CANVASD_* variables that name no setting, each with a hint (likely typos).

    They are reported, not refused: the prefix is shared with variables canvasd does not own
    (Kubernetes, for one, injects CANVASD_SERVICE_HOST etc. for a Service named `canvasd`)."""
    environ = os.environ if environ is None else environ
    known = {env_name(f) for f in Settings.model_fields} | {CONFIG_ENV}
    return [f"{name} is not a canvasd setting (ignored){_suggestion(name[len(ENV_PREFIX):].lower())}"
            for name in sorted(environ) if name.upper().startswith(ENV_PREFIX) and name.upper() not in known]


def _suggestion(key: str) -> str:
    close = difflib.get_close_matches(key.lower(), list(Settings.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _table_or_raw(value: Any) -> Any:
    try:
        return _name_table(value)
    except ValueError:
        return value  # reported by validation, with its source


def _describe(exc: ValidationError, label: Mapping[str, Any], prefix: str | None = None) -> str:
    """The first validation error as `<source of the key>: <where inside>: <what is wrong>`."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    if prefix is not None:  # a lone model: its fields are the keys
        loc, label = ["model", *loc], {"model": lambda _: prefix}
    if not loc:
        return err["msg"].removeprefix("Value error, ")
    key, inner = str(loc[0]), loc[1:]
    where = str(label[key](key)) if key in label else key
    if key == "models" and inner and isinstance(inner[0], int):  # name the model by position
        where += f" #{inner[0] + 1}"
        inner = inner[1:]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in inner).lstrip(".")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    elif err["type"] != "value_error" and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return f"{where}: {path}: {msg}" if path else f"{where}: {msg}"
