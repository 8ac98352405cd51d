"""The playground page in a real browser (the system chromium through Playwright) against a live
uvicorn serving the packaged embedded model: streaming with partial images, an edit with a mask
painted by mouse strokes, Cancel freeing the server, the server's own error message, history
across reloads, and the copied curl / Python requests run as they are."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from e2e_support import metric
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright
from web_support import (
    chromium_path,
    data_url_image,
    launch_chromium,
    sse_completed_images,
    start_embedded_server,
)

from canvasd.settings import EMBEDDED_MODEL_ID

pytestmark = [
    pytest.mark.skipif(chromium_path() is None, reason="no chromium on PATH (CI installs Debian's `chromium`)"),
    # diffusers' schedulers call np.array(tensor, copy=False) under numpy 2: noise, not our concern
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

FINAL = ".card:not(.pending) img[data-state='final']"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_embedded_server(tmp_path_factory.mktemp("web"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        b = launch_chromium(pw)
        yield b
        b.close()


@pytest.fixture
def page(browser, server) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f"{server.url}/")
    expect(pg.locator("#model option")).not_to_have_count(0)
    yield pg
    context.close()
    assert not errors, errors


def fill_generate(page: Page, prompt: str, *, steps: int | None = None, seed: int | None = None,
                  partials: int = 3, size: str | None = None) -> None:
    page.get_by_role("textbox", name="Prompt", exact=True).fill(prompt)
    if size:
        page.locator("#size").select_option(size)
    page.locator("#advanced summary").click()
    if steps is not None:
        page.get_by_label("Steps").fill(str(steps))
    if seed is not None:
        page.get_by_label("Seed").fill(str(seed))
    page.get_by_label("Partial images").select_option(str(partials))


def record_multipart(page: Page) -> None:
    """Keeps the parts of the next multipart fetch in window.__sentParts ([name, value or
    "file:<filename>"]): the browser does not expose a multipart body with files to Playwright."""
    page.evaluate("""() => {
        const send = window.fetch;
        window.fetch = (url, init) => {
            if (init && init.body instanceof FormData) {
                window.__sentParts = [...init.body.entries()].map(
                    ([k, v]) => [k, v instanceof File ? `file:${v.name}` : v]);
            }
            return send(url, init);
        };
    }""")


def cancellations(server) -> float:
    return metric(httpx.get(f"{server.url}/metrics").text, "canvasd_cancellations_total")


def test_partial_images_arrive_before_the_final_one(page: Page):
    fill_generate(page, "a red apple", steps=60, partials=3)
    states: list[str] = []
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled()
    partial = page.locator("img[data-state='partial']").first
    partial.wait_for(timeout=60_000)
    states.append("partial")
    partial_src = partial.get_attribute("src")
    expect(page.locator("#progress-text")).to_contain_text("Step")
    final = page.locator(FINAL).first
    final.wait_for(timeout=120_000)
    states.append("final")
    assert states == ["partial", "final"]
    expect(final).to_have_attribute("alt", "a red apple")
    before, after = data_url_image(partial_src), data_url_image(final.get_attribute("src"))
    assert before.size == after.size
    # a partial is the sampler's intermediate prediction, not the final image
    assert np.abs(np.asarray(before, np.int16) - np.asarray(after, np.int16)).max() > 0
    expect(page.locator("img[data-state='partial']")).to_have_count(0)
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    expect(page.locator("#progress-text")).to_contain_text("Done")


def test_edit_with_a_painted_mask_keeps_the_unmasked_pixels(page: Page, tmp_path):
    blue = (30, 60, 200, 255)
    src = tmp_path / "input.png"
    Image.new("RGBA", (256, 256), blue).save(src)
    page.get_by_role("tab", name="Edit").click()
    page.locator("#files").set_input_files(str(src))
    mask = page.get_by_label("Mask")
    expect(mask).to_be_visible()
    expect(mask).to_have_attribute("width", "256")
    page.get_by_label("Brush").fill("60")
    box = mask.bounding_box()
    # strokes over the left third of the image
    for fy in (0.1, 0.3, 0.5, 0.7, 0.9):
        page.mouse.move(box["x"] + 2, box["y"] + box["height"] * fy)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * fy, steps=6)
        page.mouse.up()
    page.get_by_role("textbox", name="Prompt", exact=True).fill("a red apple")
    page.locator("#size").select_option("256x256")
    page.get_by_label("Quality").select_option("low")
    page.locator("#advanced summary").click()
    page.get_by_label("Seed").fill("3")
    record_multipart(page)
    with page.expect_request("**/v1/images/edits") as sent:
        page.get_by_role("button", name="Generate").click()
    assert sent.value.headers["content-type"].startswith("multipart/form-data")
    parts = dict(page.evaluate("() => window.__sentParts"))
    # the SDKs' shape: one file as `image` (several as `image[]`), `mask`, values as strings
    assert parts["image"] == "file:input-1.png" and parts["mask"] == "file:mask.png"
    assert parts["prompt"] == "a red apple" and parts["seed"] == "3" and parts["stream"] == "true"
    final = page.locator(FINAL).first
    final.wait_for(timeout=120_000)
    px = np.asarray(data_url_image(final.get_attribute("src")).convert("RGBA"), np.int16)
    assert px.shape == (256, 256, 4)
    kept = px[:, 128:]  # far from the painted third: the input, exactly (up to resampling)
    assert np.abs(kept - np.array(blue)).max() <= 2
    painted = px[:, :48]
    assert np.abs(painted - np.array(blue)).mean() > 10  # the model repainted it


def test_mask_tools_undo_and_clear(page: Page, tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (128, 96), (200, 200, 200)).save(src)
    page.get_by_role("tab", name="Edit").click()
    page.locator("#files").set_input_files(str(src))
    mask = page.get_by_label("Mask")
    expect(mask).to_have_attribute("height", "96")
    painted = "() => { const c = document.getElementById('mask');" \
              " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;" \
              " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"
    box = mask.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    one = page.evaluate(painted)
    assert one > 0
    page.get_by_label("Eraser").check()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert page.evaluate(painted) < one
    page.get_by_role("button", name="Undo").click()
    assert page.evaluate(painted) == one
    page.get_by_role("button", name="Clear mask").click()
    assert page.evaluate(painted) == 0


def test_cancel_mid_stream_frees_the_server(page: Page, server):
    before = cancellations(server)
    fill_generate(page, "a cat", steps=500, partials=3)
    page.get_by_role("button", name="Generate").click()
    page.locator("img[data-state='partial']").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#progress-text")).to_contain_text("Cancelled")
    deadline = time.monotonic() + 30
    while cancellations(server) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cancellations(server) == before + 1
    stats = httpx.get(f"{server.url}/ready").json()["engine"]
    assert stats["running"] == 0 and stats["queue_depth"] == 0
    expect(page.locator(".card")).to_have_count(0)
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()


def test_an_invalid_request_shows_the_servers_message(page: Page, server):
    expected = httpx.post(f"{server.url}/v1/images/generations",
                          json={"model": EMBEDDED_MODEL_ID, "prompt": "x", "num_inference_steps": 999})
    assert expected.status_code == 400
    message = expected.json()["error"]["message"]
    fill_generate(page, "x", steps=999)
    page.get_by_role("button", name="Generate").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(message)
    expect(alert).to_contain_text("num_inference_steps")
    expect(page.locator(".card")).to_have_count(0)


def test_history_survives_a_reload(page: Page):
    fill_generate(page, "a green frog", steps=4, seed=11, partials=0)
    page.get_by_role("button", name="Generate").click()
    page.locator(FINAL).first.wait_for(timeout=120_000)
    page.reload()
    kept = page.get_by_role("img", name="a green frog")
    expect(kept).to_be_visible()
    expect(page.locator(".card figcaption").first).to_contain_text("seed 11")
    assert data_url_image(kept.get_attribute("src")).size == (1024, 1024)  # size auto, as upstream


def test_copied_curl_and_python_reproduce_the_image(page: Page, tmp_path):
    fill_generate(page, "a yellow star", steps=6, seed=42, partials=1, size="256x256")
    page.get_by_role("button", name="Generate").click()
    shown = page.get_by_role("img", name="a yellow star")
    shown.wait_for(timeout=120_000)
    expect(shown).to_have_attribute("data-state", "final")
    want = np.asarray(data_url_image(shown.get_attribute("src")), np.int16)

    page.get_by_role("button", name="Copy as curl").click()
    command = page.locator("#snippet").inner_text()
    assert command.startswith("curl ") and '"seed":42' in command
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    images = sse_completed_images(done.stdout)
    assert len(images) == 1 and images[0].size == (256, 256)
    assert np.abs(np.asarray(images[0], np.int16) - want).max() <= 2  # same seed, same image
    page.get_by_role("button", name="Close").click()

    page.get_by_role("button", name="Copy as Python").click()
    script = page.locator("#snippet").inner_text()
    assert "client.images.generate(" in script and 'extra_body={"seed": 42' in script
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    got = Image.open(tmp_path / "image-0.png")
    assert got.size == (256, 256)
    assert np.abs(np.asarray(got, np.int16) - want).max() <= 2


def test_use_as_input_then_variation(page: Page):
    fill_generate(page, "a blue car", steps=4, seed=5, partials=0)
    page.get_by_role("button", name="Generate").click()
    page.locator(FINAL).first.wait_for(timeout=120_000)
    page.get_by_role("button", name="Use as input").click()
    expect(page.get_by_role("tab", name="Edit")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("img", name="Input 1")).to_be_visible()
    page.get_by_role("tab", name="Variation").click()
    expect(page.get_by_role("textbox", name="Prompt", exact=True)).to_be_hidden()
    record_multipart(page)
    page.get_by_role("button", name="Generate").click()
    variation = page.get_by_role("img", name="Variation of the input image")
    variation.wait_for(timeout=120_000)
    parts = dict(page.evaluate("() => window.__sentParts"))
    assert parts["image"].startswith("file:input-1.") and "prompt" not in parts
    assert data_url_image(variation.get_attribute("src")).mode == "RGBA"


def test_phone_sized_screen(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.goto(f"{server.url}/")
    expect(pg.locator("#model option")).not_to_have_count(0)
    expect(pg.get_by_role("textbox", name="Prompt", exact=True)).to_be_visible()
    expect(pg.get_by_role("button", name="Generate")).to_be_visible()
    # nothing sticks out to the right of a 390 px wide screen (the mobile layout viewport would
    # silently widen to fit it)
    widest = pg.evaluate("() => Math.max(...[...document.querySelectorAll('body *')]"
                         ".filter(e => e.offsetParent !== null).map(e => e.getBoundingClientRect().right))")
    assert widest <= 390
    context.close()


def test_api_key_kept_in_the_browser_and_out_of_the_copies(browser, live_server, tmp_path):
    import os

    srv = live_server(api_keys=["sk-playground"])
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(f"{srv.url}/")
    key = pg.get_by_label("API key")
    expect(key).to_be_visible()
    expect(pg.get_by_role("alert")).to_contain_text("API key")  # the server's 401 message
    key.fill("sk-playground")
    key.press("Enter")
    expect(pg.locator("#model option")).not_to_have_count(0)
    expect(pg.get_by_role("alert")).to_be_hidden()
    pg.get_by_role("textbox", name="Prompt", exact=True).fill("a key")
    pg.get_by_role("button", name="Generate").click()
    pg.locator(FINAL).first.wait_for(timeout=60_000)
    pg.reload()  # the key stays in this browser
    expect(pg.locator("#model option")).not_to_have_count(0)
    expect(pg.get_by_label("API key")).to_have_value("sk-playground")
    pg.get_by_role("button", name="Copy as curl").click()
    command = pg.locator("#snippet").inner_text()
    assert "sk-playground" not in command and "$OPENAI_API_KEY" in command
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OPENAI_API_KEY": "sk-playground"})
    assert len(sse_completed_images(done.stdout)) == 1, done.stdout[:300]
    context.close()
