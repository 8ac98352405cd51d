"""rules.validate without a server: how requests resolve into Jobs and output options."""

from __future__ import annotations

import dataclasses

import pytest
from api_support import ShapeBackend
from PIL import Image

from canvasd.api import rules
from canvasd.api.errors import OpenAIError
from canvasd.api.protocol import input_image_tokens, output_image_tokens
from canvasd.settings import ModelSettings, Settings
from canvasd.backends.registry import ModelRegistry


def registry(**caps) -> ModelRegistry:
    b = ShapeBackend("m", **caps)
    s = Settings(models=[ModelSettings(id="m", backend="emoji")])
    return ModelRegistry(s, {"m": b})


def plan(body: dict, endpoint="generations", reg=None, strict=False, images=None, mask=None) -> rules.Plan:
    reg = reg or registry()
    loader = (lambda r: rules.InputImages(images or [], mask)) if endpoint != "generations" else None
    source = "json" if endpoint == "generations" else "form"
    return rules.validate(endpoint, source, {"prompt": "p", **body} if endpoint != "variations" else body,
                          registry=reg, strict=strict, load_images=loader)


def test_quality_resolves_to_backend_steps():
    assert (plan({"model": "m"}).job.steps, plan({"model": "m"}).out.quality) == (3, "medium")  # auto
    assert plan({"model": "m", "quality": "low"}).job.steps == 2
    p = plan({"model": "dall-e-3", "quality": "hd"})
    assert (p.out.quality, p.job.steps) == ("high", 4)
    assert plan({"model": "dall-e-3", "quality": "standard"}).out.quality == "medium"
    assert plan({"model": "gpt-image-2.5-flare", "quality": "xhigh"}).job.steps == 4  # falls back to high
    assert plan({"model": "m", "quality": "low", "num_inference_steps": 9}).job.steps == 9


def test_upscaling_backend_generates_native_and_outputs_requested():
    p = plan({"model": "gpt-image-1", "size": "1536x1024"})
    assert (p.job.width, p.job.height) == (64, 64) and (p.out.width, p.out.height) == (1536, 1024)
    p = plan({"model": "m", "size": "200x100"})  # local ids: any size within max_side
    assert p.out.size == "200x100" and (p.job.width, p.job.height) == (64, 64)


def test_non_upscaling_backend_generates_the_requested_size():
    reg = registry(upscales=False, max_side=1024)
    p = plan({"model": "m", "size": "256x128"}, reg=reg)
    assert (p.job.width, p.job.height) == (256, 128) == (p.out.width, p.out.height)
    with pytest.raises(OpenAIError):
        plan({"model": "m", "size": "250x128"}, reg=reg)


def test_background_auto():
    assert plan({"model": "m"}).out.background == "transparent"
    assert plan({"model": "m", "output_format": "jpeg"}).out.background == "opaque"
    assert plan({"model": "dall-e-2"}).out.background == "opaque"  # dall-e images are opaque
    assert plan({"model": "m"}, reg=registry(alpha=False)).out.background == "opaque"
    p = plan({"model": "m", "background": "transparent", "output_format": "webp"})
    assert p.job.transparent and p.out.transparent


def test_extensions_reach_the_job():
    p = plan({"model": "m", "seed": 7, "guidance_scale": 2.5, "negative_prompt": "blurry", "n": 3})
    assert (p.job.seed, p.job.guidance_scale, p.job.negative_prompt, p.job.n) == (7, 2.5, "blurry", 3)
    assert 0 <= plan({"model": "m"}).job.seed < 2**31
    img = Image.new("RGBA", (300, 150))
    p = plan({"model": "m", "strength": "0.4"}, endpoint="edits", images=[img])
    assert p.job.strength == 0.4 and p.job.kind == "edit"
    assert plan({"model": "m", "input_fidelity": "high"}, endpoint="edits", images=[img]).job.strength == 0.5
    with pytest.raises(OpenAIError) as exc:
        plan({"model": "m", "strength": 2}, endpoint="edits", images=[img])
    assert exc.value.code == "decimal_above_max_value"


def test_edit_auto_size_follows_the_input_aspect():
    wide = Image.new("RGBA", (300, 150))
    assert plan({"model": "gpt-image-1"}, endpoint="edits", images=[wide]).out.size == "1536x1024"
    tall = Image.new("RGBA", (150, 300))
    assert plan({"model": "gpt-image-1"}, endpoint="edits", images=[tall]).out.size == "1024x1536"
    p = plan({"model": "m"}, endpoint="edits", images=[wide], reg=registry(upscales=False, native=128))
    assert p.out.width > p.out.height and p.out.width % 8 == 0


def test_edit_inputs_are_fitted_to_the_job_and_mask_converted():
    img = Image.new("RGBA", (128, 128), (255, 0, 0, 255))
    mask = Image.new("RGBA", (128, 128), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 128, 64))  # top half: repaint
    p = plan({"model": "m"}, endpoint="edits", images=[img], mask=mask)
    assert p.job.init_images[0].size == (64, 64)
    assert p.job.mask.mode == "L" and p.job.mask.size == (64, 64)
    assert p.job.mask.getpixel((32, 5)) == 255 and p.job.mask.getpixel((32, 60)) == 0
    assert p.input_sizes == [(128, 128)]


def test_variations_have_no_prompt():
    p = plan({"model": "dall-e-2", "n": "2"}, endpoint="variations", images=[Image.new("RGBA", (64, 64))])
    assert p.job.kind == "variation" and p.job.prompt == "" and p.job.n == 2
    assert p.out.response_format == "url"  # dall-e default


def test_stream_only_keeps_partials():
    assert plan({"model": "m", "partial_images": 2}).job.partial_images == 0
    assert plan({"model": "m", "partial_images": 2, "stream": True}).job.partial_images == 2


def test_usage_rules():
    assert output_image_tokens("high", 1024, 1536) == 6240  # OpenAI's published figure
    assert output_image_tokens("low", 1024, 1024) == 272
    assert input_image_tokens(1024, 1024) == 85 + 170 * 4  # 768x768 -> 2x2 tiles
    assert input_image_tokens(64, 64) == 85 + 170


def test_dalle2_edit_without_mask_uses_the_image_alpha():
    img = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 32, 64))
    p = plan({"model": "dall-e-2"}, endpoint="edits", images=[img])
    assert p.job.mask is not None and p.job.mask.getpixel((5, 5)) == 255 and p.job.mask.getpixel((50, 5)) == 0
    assert plan({"model": "gpt-image-1"}, endpoint="edits", images=[img]).job.mask is None


def test_lora_selects_among_the_models_adapters():
    reg = registry()
    backend = reg.get("m")
    backend.capabilities = dataclasses.replace(backend.capabilities, loras=("ink", "neon"))
    assert plan({"model": "m"}, reg=reg).job.lora is None  # absent: the configured set
    assert plan({"model": "m", "lora": "ink"}, reg=reg).job.lora == (("ink", None),)
    assert plan({"model": "m", "lora": []}, reg=reg).job.lora == ()
    body = {"model": "m", "lora": ["neon", {"name": "ink", "scale": 0.4}]}
    assert plan(body, reg=reg).job.lora == (("neon", None), ("ink", 0.4))
    form = plan({"model": "m", "lora": "ink:0.5, neon"}, endpoint="edits", reg=reg,
                images=[Image.new("RGBA", (64, 64))])
    assert form.job.lora == (("ink", 0.5), ("neon", None))
    with pytest.raises(OpenAIError) as err:
        plan({"model": "m", "lora": "sepia"}, reg=reg)
    assert err.value.body()["error"]["param"] == "lora" and "'sepia'" in err.value.body()["error"]["message"]
    assert err.value.status == 400
    for bad in (3, [{"name": "ink", "scale": "x"}], [{"name": "ink", "weight": 1}], [""]):
        with pytest.raises(OpenAIError) as err:
            plan({"model": "m", "lora": bad}, reg=reg)
        assert err.value.body()["error"]["param"] == "lora"
    with pytest.raises(OpenAIError, match="lists none"):
        plan({"model": "m", "lora": "ink"})  # a model without adapters


def test_guidance_scale_refused_for_a_model_without_guidance():
    reg = registry()
    backend = reg.get("m")
    backend.capabilities = dataclasses.replace(backend.capabilities, guidance_scale=False)
    assert plan({"model": "m"}, reg=reg).job.steps > 0
    with pytest.raises(OpenAIError) as err:
        plan({"model": "m", "guidance_scale": 3.0}, reg=reg)
    assert err.value.body()["error"]["param"] == "guidance_scale"


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1.5", "gpt-image-2", "dall-e-2", "dall-e-3", "m"])
@pytest.mark.parametrize("size", rules.PRESET_SIZES + ("200x100",))
def test_permissive_mode_honours_every_size_on_every_model(model, size):
    p = plan({"model": model, "size": size})
    assert p.out.size == size


def test_strict_mode_keeps_per_model_size_refusals():
    with pytest.raises(OpenAIError) as exc:
        plan({"model": "gpt-image-1", "size": "512x512"}, strict=True)
    assert exc.value.param == "size" and exc.value.code == "invalid_value"
    with pytest.raises(OpenAIError) as exc:
        plan({"model": "gpt-image-2", "size": "256x256"}, strict=True)
    assert exc.value.param == "size"
    assert plan({"model": "gpt-image-2", "size": "1824x1024"}, strict=True).out.size == "1824x1024"
    assert plan({"model": "dall-e-2", "size": "512x512"}, strict=True).out.size == "512x512"


def test_auto_size_is_1024_on_every_model_and_native_area_for_non_upscalers():
    for model in (None, "m", "gpt-image-1", "gpt-image-2", "dall-e-3"):
        body = {"model": model} if model else {}
        assert plan(body).out.size == "1024x1024"
    reg = registry(upscales=False, native=128, max_side=1024)
    p = plan({"model": "m"}, reg=reg)
    assert p.out.size == "1024x1024" and (p.job.width, p.job.height) == (128, 128)
    wide = Image.new("RGBA", (300, 150))
    p = plan({"model": "m"}, endpoint="edits", images=[wide], reg=reg)
    assert p.out.size == "1536x1024" and p.job.width > p.job.height and p.job.width % 8 == 0


def test_quality_echo_uses_the_values_the_profile_returns():
    assert plan({"model": "gpt-image-2", "quality": "xhigh"}).out.quality == "high"
    assert plan({"model": "gpt-image-2.5-flare", "quality": "xhigh"}).out.quality == "xhigh"
    assert plan({"model": "m", "quality": "max"}).out.quality == "max"
    assert plan({"model": "gpt-image-1", "quality": "auto"}).out.quality == "medium"


def test_variations_without_model_take_the_dalle2_profile():
    p = plan({}, endpoint="variations", images=[Image.new("RGBA", (64, 64))])
    assert p.model == "dall-e-2" and p.out.shape == "dall-e-2"
    assert (p.out.response_format, p.out.size) == ("url", "1024x1024")
    assert p.job.model == "m"


def test_automatic1111_aliases_in_permissive_mode_only():
    p = plan({"model": "m", "steps": 7, "cfg_scale": 3.5})
    assert (p.job.steps, p.job.guidance_scale) == (7, 3.5)
    with pytest.raises(OpenAIError) as exc:
        plan({"model": "m", "steps": 7, "num_inference_steps": 8})
    assert exc.value.param == "steps"
    with pytest.raises(OpenAIError) as exc:
        plan({"model": "m", "steps": 0})
    assert exc.value.param == "steps" and exc.value.code == "integer_below_min_value"
    assert plan({"model": "m", "steps": "6"}, endpoint="edits", images=[Image.new("RGBA", (64, 64))]).job.steps == 6
    for key in ("sampler_name", "restore_faces"):
        with pytest.raises(OpenAIError) as exc:
            plan({"model": "m", key: "x"})
        assert exc.value.code == "unknown_parameter"
    with pytest.raises(OpenAIError) as exc:
        plan({"model": "m", "steps": 7}, strict=True)
    assert exc.value.code == "unknown_parameter" and exc.value.param == "steps"
