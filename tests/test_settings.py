"""One settings schema: precedence of its sources, and the one-line message of every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from canvasd.cli import app
from canvasd.registry import build_backend
from canvasd.settings import (
    EMBEDDED_MODEL_ID, ModelSettings, Settings, SettingsError, load_settings, model_from_arg, unknown_env_vars,
)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "canvasd.toml"
    path.write_text(text)
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    return folder


@pytest.fixture
def emoji_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


# ------------------------------------------------------------------------------ precedence ----
def test_scalar_defaults_then_file_then_env_then_flag(tmp_path):
    path = toml(tmp_path, "port = 8001\n")
    assert load_settings(environ={}).port == 8000
    assert load_settings(path, environ={}).port == 8001
    assert load_settings(path, environ={"CANVASD_PORT": "8002"}).port == 8002
    assert load_settings(path, {"port": 8003}, environ={"CANVASD_PORT": "8002"}).port == 8003
    assert load_settings(path, {"port": None}, environ={}).port == 8001  # a flag not given


def test_config_file_from_the_environment(tmp_path):
    path = toml(tmp_path, 'compat = "strict"\n')
    assert load_settings(environ={"CANVASD_CONFIG": str(path)}).compat == "strict"


def test_list_is_replaced_whole_by_a_higher_source(tmp_path):
    path = toml(tmp_path, 'api_keys = ["file-1", "file-2"]\n')
    assert load_settings(path, environ={}).api_keys == ["file-1", "file-2"]
    assert load_settings(path, environ={"CANVASD_API_KEYS": "env-1, env-2"}).api_keys == ["env-1", "env-2"]
    assert load_settings(path, environ={"CANVASD_API_KEYS": '["json-1"]'}).api_keys == ["json-1"]
    flags = {"api_keys": ["flag-1"]}
    assert load_settings(path, flags, environ={"CANVASD_API_KEYS": "env-1"}).api_keys == ["flag-1"]


def test_model_list_precedence_and_backend_inference(tmp_path, pipeline_dir, emoji_dir):
    path = toml(tmp_path, f'[[models]]\nid = "from-file"\npath = "{pipeline_dir}"\n')
    assert [m.id for m in load_settings(environ={}).models] == [EMBEDDED_MODEL_ID]
    file_models = load_settings(path, environ={}).models
    assert [(m.id, m.backend) for m in file_models] == [("from-file", "diffusers")]
    env = {"CANVASD_MODELS": f"env-a={emoji_dir};env-b=,backend=emoji"}
    env_models = load_settings(path, environ=env).models
    assert [(m.id, m.backend, m.path) for m in env_models] == [
        ("env-a", "emoji", str(emoji_dir)), ("env-b", "emoji", None)]
    flags = {"models": [f"flag={pipeline_dir},device=cpu,dtype=fp32,preload=false"]}
    (flag_model,) = load_settings(path, flags, environ=env).models
    assert (flag_model.id, flag_model.backend, flag_model.device, flag_model.dtype, flag_model.preload) == (
        "flag", "diffusers", "cpu", "fp32", False)


def test_every_model_field_from_toml(tmp_path, pipeline_dir):
    path = toml(tmp_path, f'''
[[models]]
id = "sd"
path = "{pipeline_dir}"
device = "cuda:1"
dtype = "bf16"
offload = "model"
vae_tiling = "on"
preload = false
replicas = 2
num_gpus = 0.5
loras = [{{ name = "ink", path = "/l/ink.safetensors", scale = 0.7 }}]
''')
    (model,) = load_settings(path, environ={}).models
    assert (model.device, model.dtype, model.offload, model.vae_tiling, model.preload) == (
        "cuda:1", "bf16", "model", "on", False)
    assert (model.replicas, model.num_gpus) == (2, 0.5)
    assert (model.loras[0].name, str(model.loras[0].path), model.loras[0].scale) == ("ink", "/l/ink.safetensors", 0.7)


def test_alias_tables_merge_name_by_name(tmp_path):
    path = toml(tmp_path, '[[models]]\nid = "a"\nbackend = "emoji"\n[[models]]\nid = "b"\nbackend = "emoji"\n'
                          '[aliases]\n"dall-e-2" = "a"\n"dall-e-3" = "a"\n')
    s = load_settings(path, {"aliases": ["dall-e-3=b"]}, environ={"CANVASD_ALIASES": "gpt-image-1=b"})
    assert s.aliases == {"dall-e-2": "a", "dall-e-3": "b", "gpt-image-1": "b"}
    assert s.resolve_alias("dall-e-3") == "b" and s.resolve_alias("gpt-image-2") == "a" == s.default_model
    assert s.resolve_alias("a") == "a" and s.resolve_alias("nope") is None


# A non-default value per setting, as its environment variable's text and as the value it gives.
# A new setting must be added here: the test below fails until it is.
ENV_SAMPLES = {
    "models": ("m=,backend=emoji", [ModelSettings(id="m", backend="emoji")]),
    "aliases": ("dall-e-2=canvasd-emoji", {"dall-e-2": "canvasd-emoji"}),
    "api_keys": ("k1,k2", ["k1", "k2"]),
    "compat": ("strict", "strict"),
    "host": ("0.0.0.0", "0.0.0.0"),
    "port": ("9000", 9000),
    "public_base_url": ("https://img.example", "https://img.example"),
    "url_ttl_s": ("60", 60),
    "image_dir": ("/tmp/imgs", Path("/tmp/imgs")),
    "url_secret": ("s3cret", "s3cret"),
    "max_queue": ("5", 5),
    "max_batch": ("2", 2),
    "batching": ("false", False),
    "request_timeout_s": ("1.5", 1.5),
    "torch_threads": ("3", 3),
    "precision": ("bf16", "bf16"),
    "max_loaded_models": ("2", 2),
    "device_memory_budget": ("40GiB", 40 * 2**30),
    "render_threads": ("2", 2),
    "max_upload_bytes": ("1000", 1000),
    "max_upload_pixels": ("4096", 4096),
    "log_level": ("debug", "debug"),
    "image_store": ("s3://bucket/prefix", "s3://bucket/prefix"),
    "s3_endpoint_url": ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    "s3_presigned_urls": ("true", True),
    "replicas": ("2", 2),
    "ray_address": ("auto", "auto"),
    "ingress_replicas": ("3", 3),
    "ray_object_store_mb": ("512", 512),
    "forwarded_allow_ips": ("10.0.0.0/8,127.0.0.1", ["10.0.0.0/8", "127.0.0.1"]),
    "max_request_pixels": ("1000000", 1_000_000),
    "decode_threads": ("1", 1),
    "sse_keepalive_s": ("2.5", 2.5),
    "shutdown_timeout_s": ("7", 7.0),
    "header_timeout_s": ("3", 3.0),
    "body_timeout_s": ("4", 4.0),
    "keepalive_timeout_s": ("9", 9.0),
    "max_connections": ("50", 50),
    "max_header_bytes": ("32768", 32768),
}


def test_forwarded_allow_ips_must_be_addresses_or_networks():
    with pytest.raises(SettingsError) as exc:
        load_settings(environ={"CANVASD_FORWARDED_ALLOW_IPS": "10.0.0.0/8,proxy.local"})
    assert str(exc.value) == "CANVASD_FORWARDED_ALLOW_IPS: 'proxy.local' is not an IP address, a CIDR network or *"
    assert load_settings(environ={"CANVASD_FORWARDED_ALLOW_IPS": "*"}).forwarded_allow_ips == ["*"]


def test_every_setting_is_read_from_its_environment_variable():
    assert set(ENV_SAMPLES) == set(Settings.model_fields)
    defaults = Settings()
    for name, (text, value) in ENV_SAMPLES.items():
        assert getattr(defaults, name) != value, name
        assert getattr(load_settings(environ={f"CANVASD_{name.upper()}": text}), name) == value, name


def test_unknown_environment_variables_are_reported_not_fatal():
    env = {"CANVASD_MAXBATCH": "4", "CANVASD_SERVICE_HOST": "10.0.0.1", "CANVASD_PORT": "9000"}
    assert load_settings(environ=env).port == 9000
    assert unknown_env_vars(env) == [
        "CANVASD_MAXBATCH is not a canvasd setting (ignored); did you mean 'max_batch'?",
        "CANVASD_SERVICE_HOST is not a canvasd setting (ignored)",
    ]


# ---------------------------------------------------------------------------------- errors ----
def test_file_errors_name_the_file_and_key(tmp_path):
    path = toml(tmp_path, "prot = 8001\n")
    assert error_of(path, environ={}) == f"{path}: prot: unknown setting; did you mean 'port'?"
    toml(tmp_path, 'port = "eighty"\n')
    assert error_of(path, environ={}) == (
        f"{path}: port: Input should be a valid integer, unable to parse string as an integer (got 'eighty')")
    toml(tmp_path, "max_batch = 0\n")
    assert error_of(path, environ={}) == f"{path}: max_batch: Input should be greater than or equal to 1 (got 0)"
    toml(tmp_path, "port = [\n")
    assert error_of(path, environ={}).startswith(f"{path}: invalid TOML: ")
    assert error_of(tmp_path / "missing.toml", environ={}) == f"{tmp_path / 'missing.toml'}: config file not found"


def test_model_table_errors_name_the_model(tmp_path, pipeline_dir):
    path = toml(tmp_path, f'[[models]]\nid = "a"\npath = "{pipeline_dir}"\ndevise = "cpu"\n')
    assert error_of(path, environ={}) == f"{path}: models #1: devise: unknown setting"
    toml(tmp_path, f'[[models]]\nid = "a"\npath = "{pipeline_dir}"\n[[models]]\nid = "b"\npath = "{pipeline_dir}"\n'
                   'device = "gpu"\n')
    assert error_of(path, environ={}) == (
        f"{path}: models #2: device: device must be auto, cpu, cuda, cuda:N, mps, xpu or xpu:N, not 'gpu'")
    toml(tmp_path, '[[models]]\nid = "a"\npath = "/no/such/folder"\n')
    assert error_of(path, environ={}) == (
        f"{path}: models #1: /no/such/folder is neither a diffusers pipeline folder (no model_index.json) "
        "nor a canvasd emoji weights folder (config.json + model.safetensors)")
    toml(tmp_path, '[[models]]\nid = "a"\nbackend = "emoji"\ndtype = "fp8"\n')
    assert error_of(path, environ={}) == (
        f"{path}: models #1: dtype: Input should be 'auto', 'bf16', 'fp16' or 'fp32' (got 'fp8')")
    toml(tmp_path, '[[models]]\nbackend = "emoji"\n')
    assert error_of(path, environ={}) == f"{path}: models #1: id: Field required"
    toml(tmp_path, '[[models]]\nid = "a"\nbackend = "emoji"\n[[models]]\nid = "a"\nbackend = "emoji"\n')
    assert error_of(path, environ={}) == f"{path}: models: model id 'a' is configured twice"
    toml(tmp_path, "models = []\n")
    assert error_of(path, environ={}).startswith(f"{path}: models: List should have at least 1 item")
    toml(tmp_path, '[[models]]\nid = "a"\nbackend = "emoji"\n[aliases]\n"dall-e-2" = "b"\n')
    assert error_of(path, environ={}) == f"{path}: aliases: 'dall-e-2' maps to 'b', which is not a configured model (a)"


def test_environment_errors_name_the_variable():
    assert error_of(environ={"CANVASD_PORT": "x"}) == (
        "CANVASD_PORT: Input should be a valid integer, unable to parse string as an integer (got 'x')")
    assert error_of(environ={"CANVASD_BATCHING": "maybe"}) == (
        "CANVASD_BATCHING: Input should be a valid boolean, unable to interpret input (got 'maybe')")
    assert error_of(environ={"CANVASD_COMPAT": "lax"}) == (
        "CANVASD_COMPAT: Input should be 'permissive' or 'strict' (got 'lax')")
    assert error_of(environ={"CANVASD_MODELS": "no-path"}) == (
        "CANVASD_MODELS: expected name=/path[,key=value...], got 'no-path'")
    assert error_of(environ={"CANVASD_ALIASES": "dall-e-2"}) == (
        "CANVASD_ALIASES: expected openai-name=local-model, got 'dall-e-2'")


def test_flag_errors_name_the_flag():
    assert error_of(flags={"port": "x"}, environ={}) == (
        "--port: Input should be a valid integer, unable to parse string as an integer (got 'x')")
    assert error_of(flags={"aliases": ["foo"]}, environ={}) == "--alias: expected openai-name=local-model, got 'foo'"
    assert error_of(flags={"models": ["a=,backend=emoji,color=red"]}, environ={}) == "--model #1: color: unknown setting"
    assert error_of(flags={"models": ["a=/x,device"]}, environ={}) == (
        "--model: expected key=value after the path, got 'device' in 'a=/x,device'")
    assert error_of(flags={"shiny": True}, environ={}) == "--shiny: unknown setting"
    with pytest.raises(SettingsError, match=r"^--model b=,dtype=fp8: dtype: Input should be"):
        model_from_arg("b=,dtype=fp8")


def test_settings_declared_for_later_work_are_refused_until_honoured():
    for extra in (dict(device="cuda:0"), dict(dtype="bf16"), dict(offload="model"),
                  dict(loras=[dict(name="x", path="/x.safetensors")])):
        spec = ModelSettings(id="m", backend="emoji", **extra)
        field = next(iter(extra))
        with pytest.raises(SettingsError, match=rf"^model 'm': {field} = .* is not supported yet"):
            build_backend(spec)


def test_ray_only_model_settings_are_refused_by_a_single_process_server():
    from canvasd.registry import check_single_process

    for extra in (dict(replicas=2), dict(min_replicas=1), dict(max_replicas=3), dict(num_cpus=0.5),
                  dict(num_gpus=1)):
        settings = Settings(models=[ModelSettings(id="m", backend="emoji", **extra)])
        field = next(iter(extra))
        with pytest.raises(SettingsError, match=rf"^model 'm': {field} applies only to Ray Serve"):
            check_single_process(settings)
    check_single_process(Settings(models=[ModelSettings(id="m", backend="emoji")]))


# ------------------------------------------------------------------------------- the CLI -----
def test_every_setting_is_a_serve_flag():
    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for name in Settings.model_fields:
        flag = {"models": "--model", "aliases": "--alias", "api_keys": "--api-key",
                "forwarded_allow_ips": "--forwarded-allow-ip"}.get(name, "--" + name.replace("_", "-"))
        assert flag in help_text, flag
        assert f"CANVASD_{name.upper()}" in help_text, name


def test_cli_flags_win_over_environment_and_file(tmp_path):
    path = toml(tmp_path, "port = 8001\nmax_batch = 3\nbatching = true\napi_keys = ['k']\n")
    result = CliRunner().invoke(
        app, ["settings", "--config", str(path), "--port", "8003", "--no-batching"],
        env={"CANVASD_PORT": "8002", "CANVASD_MAX_QUEUE": "5"})
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["port"], shown["max_batch"], shown["max_queue"], shown["batching"]) == (8003, 3, 5, False)
    assert shown["api_keys"] == ["***"]


@pytest.mark.parametrize("args, message", [
    (["--port", "x"], "canvasd: error: Invalid value for '--port'"),
    (["--compat", "lax"], "canvasd: error: Invalid value for '--compat': 'lax' is not one of 'permissive', 'strict'."),
    (["--alias", "foo"], "canvasd: error: --alias: expected openai-name=local-model, got 'foo'"),
    (["--alias", "dall-e-2=nope"], "canvasd: error: --alias: 'dall-e-2' maps to 'nope', which is not a configured model"),
    (["--model", "x=/no/such/dir"], "canvasd: error: --model #1: /no/such/dir is neither a diffusers"),
    (["--model", "x=,backend=emoji,device=cuda"], "canvasd: error: model 'x': device = 'cuda' is not supported yet"),
    (["--config", "/no/such.toml"], "canvasd: error: /no/such.toml: config file not found"),
])
def test_bad_settings_are_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(app, ["settings", *args], env={})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_configuration_docs_list_every_setting_as_the_schema_declares_it():
    from canvasd.settings_docs import DOC, render

    doc = DOC.read_text()
    assert render(doc) == doc, "docs/configuration.md is stale: run `python -m canvasd.settings_docs`"
    for name in [*Settings.model_fields, *ModelSettings.model_fields]:
        assert f"| `{name}` |" in doc, name
