"""Training-set builder: a tiny Noto-only build, plus the pure helpers (ids, matching, split)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from canvasd.training import data as D

needs_noto = pytest.mark.skipif(not D.NOTO_FONT.exists(),
                                reason=f"{D.NOTO_FONT} missing (apt-get install fonts-noto-color-emoji)")


def test_concept_ids_drop_fe0f_and_pad():
    assert D.concept_id(ord(c) for c in "#\ufe0f\u20e3") == "0023-20e3"
    assert D.hex_to_concept_id("0023-FE0F-20E3") == "0023-20e3"
    assert D.hex_to_concept_id("1F600") == "1f600"


def test_slug_matches_iconify_names():
    assert D.slug("A button (blood type)") == "a-button-blood-type"
    assert D.slug("Côte d’Ivoire") == "cote-divoire"  # as emojione spells it
    assert D.slug("woman’s boot") == "womans-boot"


def test_heldout_is_deterministic_order_free_and_skips_twins():
    styles = ["noto", "noto svg", "twemoji", "openmoji", "fluent flat"]
    family = {"noto": "noto", "noto svg": "noto"}
    picks = {D.heldout_style(f"c{i}", styles, family) for i in range(200)}
    assert picks <= {"twemoji", "openmoji", "fluent flat"}  # never one of the identical twins
    assert len(picks) == 3  # and it is spread over the eligible styles
    for i in range(50):
        cid = f"c{i}"
        assert D.heldout_style(cid, styles, family) == D.heldout_style(cid, styles[::-1], family)


def test_name_matching_uses_old_and_numbered_names():
    universe = {
        "1f3af": {"name": "bullseye", "aliases": ["dart"], "emoji": "\U0001f3af", "flag": False},
        "1f436": {"name": "dog face", "aliases": [], "emoji": "\U0001f436", "flag": False},
        "1f1e8-1f1f3": {"name": "China", "aliases": [], "emoji": "\U0001f1e8\U0001f1f3",
                        "flag": True},
    }

    class FakeSet:
        def names(self):
            return iter(["direct-hit", "dog-face-2", "dog-face-1", "flag-for-flag-china", "zzz"])

    got = D.match_by_name(FakeSet(), {}, universe)  # type: ignore[arg-type]
    assert got == {"1f3af": "direct-hit", "1f436": "dog-face-1", "1f1e8-1f1f3": "flag-for-flag-china"}


@needs_noto
def test_tiny_noto_build(tmp_path: Path):
    out = D.build_dataset(tmp_path / "a", size=32, workers=1, sources=["noto"], limit=24)
    assert out == tmp_path / "a" / "emoji32.npz"
    z = np.load(out)
    meta = json.loads((tmp_path / "a" / "emoji32.json").read_text(encoding="utf-8"))
    images = z["images"]
    n = len(images)
    assert 20 <= n <= 24  # a few of the first ids may be missing from the font
    assert images.shape == (n, 32, 32, 4) and images.dtype == np.uint8
    assert z["concept"].dtype == np.int32 and z["style"].dtype == np.int32
    assert z["split"].dtype == np.uint8 and z["concept"].shape == z["style"].shape == (n,)
    assert set(z["style"].tolist()) == {0} and meta["styles"][0]["name"] == "noto"
    assert meta["styles"][0]["phrase"] and meta["styles"][0]["licence"]

    alpha = images[..., 3].astype(np.float32)
    corners = alpha[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    centre = alpha[:, 14:18, 14:18]
    assert corners.mean() < 64 and centre.mean() > 192  # transparent background, opaque glyph
    assert (alpha.reshape(n, -1).max(1) == 255).all() and (alpha.reshape(n, -1).min(1) == 0).any()
    assert images[..., :3].std() > 20  # colour, not a blank or flat image

    concepts = meta["concepts"]
    assert len(concepts) == len(set(z["concept"].tolist())) == n  # one style: one image each
    for c in concepts:
        assert c["captions"] and c["captions"][0] == c["name"] and all(c["captions"])
    assert z["split"].sum() == 0  # one style only: nothing can be held out

    # Cached: same arguments return at once without rewriting.
    mtime = out.stat().st_mtime_ns
    assert D.build_dataset(tmp_path / "a", size=32, workers=1, sources=["noto"], limit=24) == out
    assert out.stat().st_mtime_ns == mtime

    # Deterministic: a second build elsewhere is identical.
    z2 = np.load(D.build_dataset(tmp_path / "b", size=32, workers=2, sources=["noto"], limit=24))
    for key in ("images", "concept", "style", "split"):
        assert np.array_equal(z[key], z2[key])


def test_missing_font_is_a_clear_error(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(D, "NOTO_FONT", tmp_path / "nope.ttf")
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        D.build_dataset(tmp_path, sources=["noto"], limit=2)
