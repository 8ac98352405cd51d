"""Screenshots of the playground for docs/playground.md (not a test):

    PYTHONPATH=src python tests/playground_screenshots.py [docs/images]

Serves the packaged embedded model on a loopback port, drives the page in the system chromium and
writes playground-generate.png (a generation streaming its partial images), playground-edit.png
(a mask painted over the image to edit, and the edit's result) and playground-phone.png.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright
from web_support import launch_chromium, start_embedded_server

FINAL = ".card:not(.pending) img[data-state='final']"


def generate(page, prompt: str, seed: int, steps: str = "", partials: str = "0", n: str = "1") -> None:
    page.get_by_role("textbox", name="Prompt", exact=True).fill(prompt)
    page.locator("#size").select_option("256x256")
    page.locator("#n").fill(n)
    page.get_by_label("Seed").fill(str(seed))
    page.get_by_label("Steps").fill(steps)
    page.get_by_label("Partial images").select_option(partials)
    run(page)


def run(page) -> None:
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    server = start_embedded_server(Path(tempfile.mkdtemp()))
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
            page.goto(f"{server.url}/")
            expect(page.locator("#model option")).not_to_have_count(0)
            page.locator("#advanced summary").click()
            for prompt, seed in (("a green frog", 7), ("a yellow star", 42), ("a slice of pizza", 3)):
                generate(page, prompt, seed)
                expect(page.get_by_role("button", name="Cancel")).to_be_disabled(timeout=120_000)
            generate(page, "a red apple", 1, steps="400", partials="3", n="2")
            page.wait_for_selector("img[data-state='partial'][data-partials='2']", timeout=120_000)
            page.screenshot(path=out / "playground-generate.png")
            expect(page.get_by_role("button", name="Cancel")).to_be_disabled(timeout=300_000)

            page.get_by_role("button", name="Use as input").first.click()
            page.get_by_role("textbox", name="Prompt", exact=True).fill("a red apple")
            mask = page.get_by_label("Mask")
            expect(mask).to_be_visible()
            mask.scroll_into_view_if_needed()
            box = mask.bounding_box()
            page.get_by_label("Brush").fill("50")
            for fy in (0.15, 0.3, 0.45):
                page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * fy)
                page.mouse.down()
                page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * fy, steps=8)
                page.mouse.up()
            page.get_by_label("Steps").fill("")
            page.get_by_label("Partial images").select_option("0")
            page.locator("#n").fill("1")
            run(page)
            expect(page.get_by_role("button", name="Cancel")).to_be_disabled(timeout=120_000)
            page.evaluate("() => window.scrollTo(0, 0)")
            page.locator("#form").evaluate("f => f.scrollTop = 0")
            page.screenshot(path=out / "playground-edit.png")

            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                     is_mobile=True, has_touch=True)
            phone.goto(f"{server.url}/")
            expect(phone.locator("#model option")).not_to_have_count(0)
            phone.get_by_role("textbox", name="Prompt", exact=True).fill("a red apple")
            phone.screenshot(path=out / "playground-phone.png")
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
