"""Image intake over raw HTTP: multipart shapes, limits while streaming, bad files, masks, JSON edits."""

from __future__ import annotations

import base64
import io
import os
import resource
import struct
import zlib

import httpx
import pytest
from PIL import Image

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def url(live_server) -> str:
    return live_server().url


@pytest.fixture(scope="module")
def strict_url(live_server) -> str:
    return live_server(compat="strict").url


def png(size=(64, 64), mode="RGBA", colour=(200, 40, 40, 255), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour[: len(mode)] if mode != "L" else 128).save(buf, fmt)
    return buf.getvalue()


def noisy_png(side=256) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A tiny file that claims w x h pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def multipart(parts: list[tuple]) -> tuple[bytes, str]:
    """Hand-built body: (name, value) text parts, (name, filename, bytes, content_type|None) files."""
    boundary = "canvasdtestboundary"
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{boundary}\r\n".encode())
        if len(part) == 2:
            out.write(f'Content-Disposition: form-data; name="{part[0]}"\r\n\r\n{part[1]}\r\n'.encode())
        else:
            name, filename, data, ctype = part
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode())
            if ctype is not None:
                out.write(f"Content-Type: {ctype}\r\n".encode())
            out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post_parts(url: str, parts: list[tuple], path="edits") -> httpx.Response:
    body, ctype = multipart(parts)
    return httpx.post(f"{url}/v1/images/{path}", content=body, headers={"content-type": ctype}, timeout=30)


def err(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


BASE = [("model", "test-model"), ("prompt", "edit it")]


def test_multipart_scalars_arrive_as_strings(url):
    r = post_parts(url, BASE + [("n", "2"), ("stream", "false"), ("size", "128x128"),
                               ("image", "a.png", png(), "image/png")])
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2
    r = post_parts(url, BASE + [("stream", "true"), ("partial_images", "1"), ("image", "a.png", png(), "image/png")])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert "event: image_edit.partial_image" in r.text and "event: image_edit.completed" in r.text
    e = err(post_parts(url, BASE + [("n", "two"), ("image", "a.png", png(), "image/png")]))
    assert e["message"] == ("Invalid type for 'n': expected an integer, but got a string value that could not "
                            "be converted into an integer.")
    e = err(post_parts(url, BASE + [("stream", "yes"), ("image", "a.png", png(), "image/png")]))
    assert (e["param"], e["code"]) == ("stream", "invalid_type")


def test_image_field_shapes(url):
    e = err(post_parts(url, BASE + [("image", "not a file")]))
    assert e["message"] == ("Invalid type for 'image': expected one of an array of files or file, but got a "
                            "string instead.")
    e = err(post_parts(url, BASE + [("images", "a.png", png(), "image/png")]))
    assert e["message"] == "Unknown parameter: 'images'."
    # repeated `image` parts (curl -F image=@a -F image=@b) and `image[]` both make an array
    r = post_parts(url, BASE + [("image", "a.png", png(), "image/png"), ("image", "b.png", png(), "image/png")])
    assert r.status_code == 200, r.text
    parts = BASE + [("image[]", f"{i}.png", png((8, 8)), "image/png") for i in range(17)]
    e = err(post_parts(url, parts))
    assert e["message"] == ("Invalid 'image': array too long. Expected an array with maximum length 16, but got "
                            "an array with length 17 instead.")
    e = err(post_parts(url, BASE + [("image", "a.png", png(), "image/png"), ("mask", "just text")]))
    assert e["message"] == "Invalid type for 'mask': expected a file, but got a string instead."


def test_nested_bracket_keys(url):
    e = err(post_parts(url, BASE + [("svg[model]", "x"), ("image", "a.png", png(), "image/png")]))
    assert e["param"] == "svg" and "svg" in e["message"]
    e = err(post_parts(url, BASE + [("svg[bogus]", "x"), ("image", "a.png", png(), "image/png")]))
    assert e["message"] == "Unknown parameter: 'svg.bogus'."


@pytest.mark.parametrize("data,ctype,detail", [
    (b"\x89PNG\r\n\x1a\n" + os.urandom(200), "image/png", "not a valid PNG, JPEG or WebP image"),
    (b"hello, I am text", "application/octet-stream", "not a valid PNG, JPEG or WebP image"),
    (b"", "image/png", "empty"),
])
def test_bad_files(url, data, ctype, detail):
    e = err(post_parts(url, BASE + [("image", "a.png", data, ctype)]))
    assert (e["param"], e["code"]) == ("image", "invalid_image_file") and detail in e["message"]


def test_truncated_png(url):
    data = noisy_png()
    e = err(post_parts(url, BASE + [("image[]", "ok.png", png(), "image/png"),
                                    ("image[]", "cut.png", data[: len(data) // 2], "image/png")]))
    assert e["param"] == "image[1]" and "truncated" in e["message"]


@pytest.mark.parametrize("side", [5000, 20000])
def test_decompression_bomb_refused_before_decoding(url, side):
    e = err(post_parts(url, BASE + [("image", "bomb.png", png_header_only(side, side), "image/png")]))
    assert (e["param"], e["code"]) == ("image", "image_too_large")


def test_unsupported_declared_types(url):
    e = err(post_parts(url, BASE + [("image", "a.gif", png(), "image/gif")]))
    assert e["message"] == ("Invalid file 'image': unsupported mimetype ('image/gif'). Supported file formats "
                            "are 'image/jpeg', 'image/png', and 'image/webp'.")
    # no Content-Type at all: permissive mode sniffs
    assert post_parts(url, BASE + [("image", "a", png(), None)]).status_code == 200


def test_mask_rules(url):
    img = png((128, 128))
    e = err(post_parts(url, BASE + [("image", "a.png", img, "image/png"), ("mask", "m.png", png((64, 64)), "image/png")]))
    assert (e["param"], e["code"]) == ("mask", "invalid_mask_image") and "128x128" in e["message"]
    e = err(post_parts(url, BASE + [("image", "a.png", img, "image/png"),
                                    ("mask", "m.png", png((128, 128), mode="RGB"), "image/png")]))
    assert e["param"] == "mask" and "alpha" in e["message"]
    mask = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    r = post_parts(url, BASE + [("image", "a.png", img, "image/png"), ("mask", "m.png", buf.getvalue(), "image/png")])
    assert r.status_code == 200, r.text


def test_oversized_part_is_refused_while_streaming(url):
    """60 MB against the 50 MB limit: refused at the limit, without the body ever being held in RAM
    (the client streams it; file parts spill to disk past 1 MiB), and the server keeps serving."""
    boundary = "bigboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    chunk = b"\0" * MiB

    def body():
        yield head
        for _ in range(60):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = httpx.post(f"{url}/v1/images/edits", content=body(), timeout=60,
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    e = err(r)
    assert (e["param"], e["code"]) == ("image", "file_too_large")
    assert grown_mb < 40, f"peak RSS grew by {grown_mb:.0f} MB"
    assert httpx.post(f"{url}/v1/images/generations", json={"model": "test-model", "prompt": "x"}).status_code == 200


def test_malformed_multipart(url):
    r = httpx.post(f"{url}/v1/images/edits", content=b"garbage",
                   headers={"content-type": "multipart/form-data"})
    assert "boundary" in err(r)["message"]
    r = httpx.post(f"{url}/v1/images/edits", content=b"--b\r\nnot headers at all",
                   headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("Invalid multipart body")


def test_strict_mime_policy_and_dalle2_uploads(strict_url):
    e = err(post_parts(strict_url, [("model", "gpt-image-1"), ("prompt", "x"),
                                    ("image", "upload", png(), "application/octet-stream")]))
    assert e["message"] == ("Invalid file 'image': unsupported mimetype ('application/octet-stream'). Supported "
                            "file formats are 'image/jpeg', 'image/png', and 'image/webp'.")
    assert e["code"] == "unsupported_file_mimetype"
    e = err(post_parts(strict_url, [("model", "gpt-image-1"), ("prompt", "x"),
                                    ("image[]", "a.png", png(), "image/png"), ("image[]", "upload", png(), None)]))
    assert (e["param"], e["code"]) == ("image[1]", "missing_file_mimetype")
    d2 = [("model", "dall-e-2"), ("prompt", "x")]
    e = err(post_parts(strict_url, d2 + [("image[]", "a.png", png(), "image/png")]))
    assert e["message"] == "Invalid type for 'image': expected a file, but got an array instead."
    e = err(post_parts(strict_url, d2 + [("image", "a.jpg", png(fmt="JPEG", mode="RGB"), "image/jpeg")]))
    assert e["message"].endswith("Supported file formats are 'image/png'.")
    e = err(post_parts(strict_url, d2 + [("image", "a.png", png(fmt="JPEG", mode="RGB"), "image/png")]))
    assert e["message"] == "Uploaded image must be a PNG and less than 4 MB."
    e = err(post_parts(strict_url, d2 + [("image", "a.png", png((64, 32)), "image/png")]))
    assert e["message"] == "Uploaded image must be square."
    e = err(post_parts(strict_url, d2 + [("image", "a.png", png(mode="RGB"), "image/png")]))
    assert e["message"] == "Invalid input image - format must be in ['RGBA', 'LA', 'L'], got RGB."
    r = post_parts(strict_url, d2 + [("image", "a.png", png(), "image/png"), ("size", "256x256"),
                                     ("response_format", "b64_json")])
    assert r.status_code == 200 and set(r.json()) == {"created", "data"}
    r = post_parts(strict_url, [("model", "dall-e-2"), ("image", "a.png", png(), "image/png")], path="variations")
    assert r.status_code == 200 and r.json()["data"][0]["url"]


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def json_edit(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/images/edits", json={"model": "test-model", "prompt": "x", **body}, timeout=30)


def test_json_edits(url):
    e = err(json_edit(url, {}))
    assert (e["param"], e["code"]) == ("images", "missing_required_parameter")
    e = err(json_edit(url, {"images": None}))
    assert e["message"] == "Invalid type for 'images': expected an array of objects, but got null instead."
    e = err(json_edit(url, {"images": []}))
    assert (e["param"], e["code"]) == ("images", "empty_array")
    e = err(json_edit(url, {"images": [{"image_url": data_url(png((8, 8)))}] * 17}))
    assert e["code"] == "array_above_max_length"
    e = err(json_edit(url, {"images": [{"file_id": "file-abc"}]}))
    assert e["param"] == "images[0].file_id" and "Files API" in e["message"]
    e = err(json_edit(url, {"images": [{"image_url": "https://example.com/a.png"}]}))
    assert e["param"] == "images[0].image_url" and "does not download" in e["message"]
    e = err(json_edit(url, {"images": [{"image_url": "data:image/png;base64,@@@"}]}))
    assert "base64" in e["message"]
    e = err(json_edit(url, {"images": [{"image_url": data_url(png()), "detail": "high"}]}))
    assert e["message"] == "Unknown parameter: 'images[0].detail'."
    e = err(json_edit(url, {"images": [{"image_url": data_url(png(), "text/plain")}]}))
    assert e["code"] == "unsupported_file_mimetype"
    e = err(json_edit(url, {"images": [{"image_url": data_url(png((64, 64)))}],
                            "mask": {"image_url": data_url(png((32, 32)))}}))
    assert e["param"] == "mask.image_url"
    e = err(json_edit(url, {"image": data_url(png())}))
    assert e["message"] == "Unknown parameter: 'image'."
    r = json_edit(url, {"images": [{"image_url": data_url(png())}, {"image_url": data_url(png(fmt="WEBP"), "image/webp")}],
                        "mask": {"image_url": data_url(png())}, "output_format": "webp"})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))).format == "WEBP"
