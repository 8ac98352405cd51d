"""media/: encoding (formats, alpha, compression, determinism), fitting, and the signed-url store."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from canvasd.media.encode import MEDIA_TYPES, encode_image
from canvasd.media.resize import fit_image
from canvasd.media.store import Expired, ImageStore, InvalidSignature, NotFound, StoredImage


def emoji_like(size: int = 64) -> Image.Image:
    """A red disc on a fully transparent background, plus a textured band (compressible variety)."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((size // 8, size // 8, size * 7 // 8 - 1, size * 7 // 8 - 1), fill=(220, 30, 30, 255))
    rng = np.random.default_rng(0)
    arr = np.asarray(im).copy()
    band = slice(size * 3 // 8, size * 5 // 8)
    arr[band, band, :3] = rng.integers(0, 255, arr[band, band, :3].shape, dtype=np.uint8)
    return Image.fromarray(arr, "RGBA")


def photo_like(w: int = 256, h: int = 192) -> Image.Image:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# -- encode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,pil_format", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
@pytest.mark.parametrize("transparent", [True, False])
def test_encode_formats_decode_with_right_mode(fmt, pil_format, transparent):
    src = emoji_like(96)
    im = decode(encode_image(src, fmt, None, transparent))
    assert im.format == pil_format
    assert im.size == (96, 96)
    if transparent and fmt != "jpeg":
        assert im.mode == "RGBA"
        corner, centre = im.getpixel((0, 0)), im.getpixel((48, 20))
        assert corner[3] == 0  # transparent background survives
        assert centre[3] == 255
    else:
        assert im.mode == "RGB"  # jpeg is never transparent
        assert all(c >= 245 for c in im.getpixel((0, 0)))  # flattened onto white
        r, g, b = im.getpixel((48, 20))
        assert r > 180 and g < 90 and b < 90  # the red disc itself is untouched


def test_png_is_lossless():
    src = emoji_like(64)
    assert np.array_equal(np.asarray(decode(encode_image(src, "png", 100, True))), np.asarray(src))
    rgb = photo_like()
    assert np.array_equal(np.asarray(decode(encode_image(rgb, "png", None, False))), np.asarray(rgb))


def test_rgb_input_opaque_and_modes_normalised():
    for mode in ("L", "P", "RGB", "LA"):
        src = photo_like().convert(mode)
        im = decode(encode_image(src, "png", None, False))
        assert im.mode == "RGB" and im.size == src.size


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_compression_shrinks_lossy_formats_monotonically(fmt):
    src = photo_like(256, 256)
    sizes = [len(encode_image(src, fmt, q, False)) for q in (100, 80, 50, 20, 0)]
    assert sizes == sorted(sizes, reverse=True), sizes
    assert sizes[0] > 2 * sizes[-1]
    # quality actually follows: the best setting is closest to the source
    err = {
        q: np.abs(np.asarray(decode(encode_image(src, fmt, q, False)), float) - np.asarray(src)).mean()
        for q in (100, 20)
    }
    assert err[100] < err[20]


def test_encoding_is_deterministic_and_drops_metadata():
    src = emoji_like(64)
    src.info["icc_profile"] = b"not a real profile"
    src.info["exif"] = b"Exif\x00\x00junk"
    for fmt in ("png", "jpeg", "webp"):
        a = encode_image(src, fmt, 90, True)
        b = encode_image(src.copy(), fmt, 90, True)
        assert a == b
        assert b"not a real profile" not in a and b"junk" not in a
    assert src.mode == "RGBA" and "icc_profile" in src.info  # caller's image untouched


def test_encode_rejects_bad_arguments():
    with pytest.raises(ValueError):
        encode_image(emoji_like(), "gif", None, False)
    with pytest.raises(ValueError):
        encode_image(emoji_like(), "jpeg", 101, False)


# -- fit_image -------------------------------------------------------------------------------


def test_fit_square_upscale_keeps_size_and_alpha():
    out = fit_image(emoji_like(64), 1024, 1024)
    assert out.size == (1024, 1024) and out.mode == "RGBA"
    assert out.getpixel((0, 0))[3] == 0 and out.getpixel((512, 160))[3] == 255


@pytest.mark.parametrize("size", [(1536, 1024), (1024, 1536), (300, 100)])
def test_fit_letterboxes_centred_without_stretching(size):
    w, h = size
    out = fit_image(emoji_like(64), w, h)
    assert out.size == (w, h) and out.mode == "RGBA"
    side = min(w, h)
    alpha = np.asarray(out)[..., 3]
    ys, xs = np.nonzero(alpha > 127)
    # the disc stays round (no stretch) and centred
    assert abs((xs.max() - xs.min()) - (ys.max() - ys.min())) <= 2
    assert abs((xs.max() + xs.min()) / 2 - w / 2) <= 2
    assert abs((ys.max() + ys.min()) / 2 - h / 2) <= 2
    assert abs((xs.max() - xs.min()) - side * 0.75) <= side * 0.03


def test_fit_rgb_letterbox_pads_transparent_and_encodes_white():
    out = fit_image(photo_like(128, 128), 256, 128)
    assert out.mode == "RGBA" and out.getpixel((5, 64))[3] == 0 and out.getpixel((128, 64))[3] == 255
    flat = decode(encode_image(out, "png", None, False))
    assert flat.getpixel((5, 64)) == (255, 255, 255)
    same_aspect = fit_image(photo_like(128, 96), 256, 192)
    assert same_aspect.mode == "RGB" and same_aspect.size == (256, 192)


def test_fit_resamples_premultiplied_no_fringe():
    # opaque red next to *transparent green*: a straight-alpha resize would bleed green into the edge
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[:, :4] = (255, 0, 0, 255)
    arr[:, 4:] = (0, 255, 0, 0)
    out = np.asarray(fit_image(Image.fromarray(arr, "RGBA"), 128, 128, sharpen_alpha=False)).astype(int)
    visible = out[..., 3] >= 32
    assert visible.any() and (out[..., 3][visible] < 255).any()  # real antialiased edge pixels
    assert out[..., 1][visible].max() <= 8  # no green fringe where there is any coverage


def test_fit_sharpens_upscaled_alpha_edges():
    src = emoji_like(64)
    soft = np.asarray(fit_image(src, 1024, 1024, sharpen_alpha=False))[..., 3]
    crisp = np.asarray(fit_image(src, 1024, 1024))[..., 3]
    partial = lambda a: int(((a > 8) & (a < 247)).sum())  # noqa: E731
    assert partial(crisp) < partial(soft) / 3
    assert partial(crisp) > 0  # still antialiased
    # opaque RGB passes through plain LANCZOS
    rgb = photo_like(64, 64)
    assert fit_image(rgb, 256, 256).mode == "RGB"


# -- ImageStore ------------------------------------------------------------------------------


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def parse_query(q: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in q.split("&"))


@pytest.fixture
def store(tmp_path):
    return ImageStore(tmp_path / "images", b"s3cret", ttl_s=3600, clock=Clock())


def test_store_round_trip(store):
    data = encode_image(emoji_like(), "webp", 80, True)
    stored = store.save(data, "webp")
    assert stored.name.endswith(".webp") and stored.expires_at == int(store._clock()) + 3600
    other = store.save(data, "webp")
    assert other.name != stored.name and len(stored.name) > 40  # random, unguessable
    q = parse_query(store.signed_query(stored))
    assert q["expires"] == str(stored.expires_at) and len(q["sig"]) == 64
    path, media_type = store.open(stored.name, q["expires"], q["sig"])
    assert media_type == MEDIA_TYPES["webp"] == "image/webp"
    assert path.read_bytes() == data
    assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp")]


def test_store_rejects_tampering(store):
    stored = store.save(b"x", "png")
    q = parse_query(store.signed_query(stored))
    bad_sig = ("0" if q["sig"][0] != "0" else "1") + q["sig"][1:]
    with pytest.raises(InvalidSignature):
        store.open(stored.name, q["expires"], bad_sig)
    with pytest.raises(InvalidSignature):  # extending the expiry breaks the signature
        store.open(stored.name, str(stored.expires_at + 3600), q["sig"])
    with pytest.raises(InvalidSignature):
        store.open(stored.name, "soon", q["sig"])
    with pytest.raises(InvalidSignature):  # another file, same signature
        other = store.save(b"y", "png")
        store.open(other.name, q["expires"], q["sig"])
    foreign = ImageStore(store.root, b"other secret", 3600, clock=store._clock)
    with pytest.raises(InvalidSignature):
        foreign.open(stored.name, q["expires"], q["sig"])


def test_store_expiry(store):
    stored = store.save(b"x", "jpeg")
    q = parse_query(store.signed_query(stored))
    store._clock.t = stored.expires_at  # valid through its last second
    store.open(stored.name, q["expires"], q["sig"])
    store._clock.t = stored.expires_at + 1
    with pytest.raises(Expired):
        store.open(stored.name, q["expires"], q["sig"])


@pytest.mark.parametrize(
    "name", ["../secret.png", "..%2Fsecret.png", "/etc/passwd", "img-1-abc/../../x.png", "", "a.png"]
)
def test_store_rejects_traversal_and_foreign_names(store, name):
    (store.root.parent / "secret.png").write_bytes(b"private")
    sig = store.signer.sign(name, 2_000_000_000)  # even a correctly signed foreign name is refused
    with pytest.raises(NotFound):
        store.open(name, 2_000_000_000, sig)


def test_store_missing_file_is_not_found(store):
    stored = store.save(b"x", "png")
    q = parse_query(store.signed_query(stored))
    (store.root / stored.name).unlink()
    with pytest.raises(NotFound):
        store.open(stored.name, q["expires"], q["sig"])


def test_sweep_deletes_expired_only_and_survives_restart(store, tmp_path):
    old = store.save(b"old", "png")
    store._clock.t += 1800
    new = store.save(b"new", "png")
    (store.root / "README").write_text("not ours")
    stale_tmp = store.root / ".tmp-img-crashed.png"
    stale_tmp.write_bytes(b"half")
    os.utime(stale_tmp, (store._clock.t - 7200, store._clock.t - 7200))
    assert store.sweep() == 1  # only the stale temp file so far
    # a fresh process (new store object, same folder) knows every file's expiry from its name
    restarted = ImageStore(store.root, b"s3cret", 3600, clock=Clock(old.expires_at + 1))
    assert restarted.sweep() == 1
    names = {p.name for p in store.root.iterdir()}
    assert old.name not in names and new.name in names and "README" in names


def test_sweeper_thread_sweeps_and_stops(tmp_path):
    clock = Clock()
    store = ImageStore(tmp_path, b"k", ttl_s=10, clock=clock)
    stored = store.save(b"x", "png")
    clock.t += 11
    store.start_sweeper(interval_s=0.02)
    deadline = time.time() + 5
    while (tmp_path / stored.name).exists() and time.time() < deadline:
        time.sleep(0.01)
    assert not (tmp_path / stored.name).exists()
    thread = store._sweeper._thread
    assert thread is not None and thread.daemon and thread.is_alive()
    store.stop_sweeper()
    assert not thread.is_alive()
    store.stop_sweeper()  # idempotent


def test_store_validates_arguments(tmp_path):
    with pytest.raises(ValueError):
        ImageStore(tmp_path, b"", 60)
    store = ImageStore(tmp_path, b"k", 60)
    with pytest.raises(ValueError):
        store.save(b"x", "gif")
    assert isinstance(store.save(b"x", "jpg"), StoredImage)


def test_jpeg_high_quality_noise_does_not_overflow_pillow_buffer():
    rng = np.random.default_rng(2)
    noise = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), "RGB")
    im = decode(encode_image(noise, "jpeg", 100, False))
    assert im.format == "JPEG" and im.size == (128, 128)
    assert encode_image(noise, "jpeg", 100, False) == encode_image(noise, "jpeg", 100, False)


def test_transparent_request_on_opaque_image_writes_rgb():
    for fmt in ("png", "webp"):
        assert decode(encode_image(photo_like(), fmt, None, True)).mode == "RGB"


def test_store_names_are_ascii_and_matched_whole(store):
    stored = store.save(b"x", "png")
    hexpart = stored.name.split("-")[2].split(".")[0]
    exp = stored.expires_at
    for name in (stored.name + "\n",  # `$` in a search would accept this
                 f"img-{str(exp).translate(str.maketrans('0123456789', '٠١٢٣٤٥٦٧٨٩'))}-{hexpart}.png"):
        with pytest.raises(NotFound):  # refused by name, before the signature is even checked
            store.open(name, str(exp), store.signer.sign(name, exp))


def test_store_does_not_follow_symlinks(store, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not an image")
    stored = store.save(b"x", "png")
    name = stored.name.replace(stored.name.split("-")[2][:32], "f" * 32)
    os.symlink(secret, store.root / name)
    with pytest.raises(NotFound):
        store.open(name, str(stored.expires_at), store.signer.sign(name, stored.expires_at))
    assert store.sweep() == 0 and (store.root / name).is_symlink()  # the sweeper leaves it alone too
