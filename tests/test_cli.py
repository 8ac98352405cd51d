"""The `canvasd` command through typer's runner: help, one-line errors, and `generate` on the
server's own validation and rendering (the embedded model: fast)."""

from __future__ import annotations

import sys
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from canvasd.api import rules
from canvasd.api.errors import OpenAIError
from canvasd.cli import app
from canvasd.cli.common import CommandError, require_extra
from canvasd.cli.training import DEFAULT_BUDGET_MINUTES, train_config
from canvasd.backends.registry import ModelRegistry
from canvasd.settings import Settings

COMMANDS = [[], ["serve"], ["settings"], ["generate"], ["bench"], ["train"], ["train", "data"],
            ["train", "export"], ["eval"], ["eval", "report"], ["eval", "sheet"], ["eval", "recon"],
            ["eval", "probe"]]


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "120", **(env or {})})


def one_line_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stderr.startswith("canvasd: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    return result.stderr.strip()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "canvasd")
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    usage, _, rest = result.stdout.partition("\n")
    assert usage.startswith("Usage: ") and " ".join(command) in usage
    assert len(rest.strip().splitlines()[0]) > 20  # a description, not just the usage line


@pytest.mark.parametrize("args, message", [
    (["serve", "--alias", "foo"], "canvasd: error: --alias: expected openai-name=local-model, got 'foo'"),
    (["serve", "--model", "bad"], "canvasd: error: --model: expected name=/path[,key=value...], got 'bad'"),
    (["serve", "--model", "x=/no/such/dir"], "canvasd: error: --model #1: /no/such/dir is neither a diffusers "
     "pipeline folder (no model_index.json) nor a canvasd emoji weights folder (config.json + model.safetensors)"),
    (["serve", "--port", "http"], "canvasd: error: Invalid value for '--port': Input should be a valid integer"),
    (["serve", "--bogus"], "canvasd: error: No such option: --bogus"),
    (["bogus"], "canvasd: error: No such command 'bogus'."),
    (["generate", "x", "--output", "x.gif"], "canvasd: error: --output: 'x.gif' must end in one of .png, .jpg, "
     ".jpeg, .webp (the image format is taken from it)"),
    (["bench", "--concurrency", "1,two"], "canvasd: error: Invalid value for '--concurrency': expected "
     "comma-separated positive integers, got '1,two'"),
    (["bench", "--stream", "sometimes"], "canvasd: error: Invalid value for '--stream': 'sometimes' is not one of"),
    (["bench", "--scenario", "grpc"], "canvasd: error: unknown scenarios ['grpc']; choose from"),
    (["bench", "--model", "x=/no/such/dir"], "canvasd: error: --model x=/no/such/dir: /no/such/dir is neither"),
    (["train", "export", "/no/such/ckpt.pt"],
     "canvasd: error: Invalid value for 'checkpoint': file '/no/such/ckpt.pt' does not exist."),
    (["train", "--max-steps", "5", "export", "ckpt.pt"], "canvasd: error: --max-steps is an option of the "
     "training run, not of `canvasd train export`"),
    (["eval", "recon", "r.png", "--data-dir", "/no/such/data"], "canvasd: error: no dataset 'emoji64' in "
     "/no/such/data: build it with `canvasd train data --data-dir /no/such/data`"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    assert one_line_error(invoke(*args)).startswith(message)


def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path):
    for content in (b"", b"not a checkpoint"):
        (tmp_path / "ckpt.pt").write_bytes(content)
        message = one_line_error(invoke("train", "export", str(tmp_path / "ckpt.pt"), "--to", str(tmp_path / "w")))
        assert message.startswith(f"canvasd: error: {tmp_path / 'ckpt.pt'}: not a canvasd training checkpoint (")
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------ optional deps --
@pytest.mark.parametrize("args, module, extra", [
    (["bench", "--quick"], "matplotlib", "bench"),
    (["bench", "--quick"], "openai", "bench"),
    (["train", "--tiny", "--max-steps", "1"], "cairosvg", "train"),
    (["train", "data"], "emoji", "train"),
])
def test_missing_extra_is_named_before_any_work(monkeypatch, args, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # how Python marks a module as not importable
    t0 = time.perf_counter()
    message = one_line_error(invoke(*args))
    assert message == f"canvasd: error: this command needs {module}: pip install 'canvasd[{extra}]'"
    assert time.perf_counter() - t0 < 5  # refused up front, not after the work


def test_require_extra_lists_every_missing_module():
    require_extra("bench")  # installed here
    with pytest.raises(CommandError, match=r"^this command needs no_such_mod_a, no_such_mod_b: pip install "
                                           r"'canvasd\[bench\]'$"):
        require_extra("bench", ("json", "no_such_mod_a", "no_such_mod_b"))


# ------------------------------------------------------------------------------------ train ----
def test_train_without_options_has_a_bounded_default_budget():
    cfg = train_config()
    assert cfg.max_minutes == DEFAULT_BUDGET_MINUTES and cfg.max_steps is None
    steps_only = train_config(max_steps=10)
    assert steps_only.max_steps == 10 and steps_only.max_minutes is None
    tiny = train_config(tiny=True, lr=1e-3, prediction_type="v_prediction")
    assert tiny.lr == 1e-3 and tiny.model.prediction_type == "v_prediction" and tiny.batch_size == 4


# --------------------------------------------------------------------------------- generate ----
def test_generate_writes_decodable_images_of_the_asked_size(tmp_path):
    out = tmp_path / "apple.webp"
    result = invoke("generate", "a red apple", "-o", str(out), "--size", "96x80", "--quality", "low",
                    "--n", "2", "--seed", "3", "--torch-threads", "1")
    assert result.exit_code == 0, result.output
    for i in range(2):
        with Image.open(tmp_path / f"apple-{i}.webp") as im:
            assert im.format == "WEBP" and im.size == (96, 80)
            im.load()
    assert not out.exists()
    single = tmp_path / "one.jpg"
    result = invoke("generate", "a red apple", "-o", str(single), "--size", "64x64", "--quality", "low",
                    "--background", "opaque", "--torch-threads", "1")
    assert result.exit_code == 0, result.output
    with Image.open(single) as im:
        assert im.format == "JPEG" and im.size == (64, 64)


def server_message(body: dict) -> str:
    """What POST /v1/images/generations answers for `body`: the same validator, same registry."""
    settings = Settings()
    with pytest.raises(OpenAIError) as info:
        rules.validate("generations", "json", body, registry=ModelRegistry(settings), strict=False)
    return info.value.message


@pytest.mark.parametrize("args, body", [
    (["--quality", "ultra"], {"quality": "ultra"}),
    (["--request-model", "gpt-image-1", "--quality", "hd"], {"model": "gpt-image-1", "quality": "hd"}),
    (["--request-model", "dall-e-3", "--n", "2"], {"model": "dall-e-3", "n": 2}),
    (["--size", "big"], {"size": "big"}),
    (["--n", "11"], {"n": 11}),
    (["--request-model", "no-such-model"], {"model": "no-such-model"}),
    (["--output-compression", "50"], {"output_compression": 50}),
    (["--background", "transparent", "-o", "x.jpg"], {"background": "transparent", "output_format": "jpeg"}),
])
def test_generate_refuses_what_the_server_refuses(tmp_path, args, body):
    expected = server_message({"prompt": "x", "output_format": "png", **body})
    message = one_line_error(invoke("generate", "x", "-o", str(tmp_path / "x.png"), *args))
    assert message.endswith(expected), (message, expected)
    assert not list(tmp_path.iterdir())
