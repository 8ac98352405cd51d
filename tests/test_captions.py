"""Caption widening in the dataset builder: the npm caption source parsed from a small fixture file
(offline, no npm), keyword filtering and order, colour phrases from synthetic art."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from canvasd.training import data as D


def _write(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def test_emojilib_parsing(tmp_path: Path):
    _write(tmp_path / "emojilib/dist/emoji-en-US.json",
           {"\U0001f408": ["cat", "feline", "house_cat"], "#\ufe0f\u20e3": ["hash", "number"]})
    lib = D.emojilib_keywords(tmp_path)
    assert lib["1f408"] == ["cat", "feline", "house cat"]
    assert lib["0023-20e3"] == ["hash", "number"]  # FE0F dropped from the key, like the ids


def test_junk_captions():
    for junk in ("a", "?", "143", "13:00", ":D", "+1", "cat2", " "):
        assert D.is_junk_caption(junk), junk
    for ok in ("af", "t-rex", "1st place medal", "keycap #", "cat"):
        assert not D.is_junk_caption(ok), ok


def test_keyword_table_filters_and_orders():
    concepts = [f"c{i}" for i in range(200)]
    # "thing" is on 5 % of the concepts: a category word, dropped (MAX_KEYWORD_SHARE = 2.5 %)
    common = {f"c{i}": ["thing"] for i in range(10)}
    a = {"c0": ["Fruit", "apple", "42"], "c1": ["fruit"], "c2": ["fruit"]}
    b = {"c0": ["crisp", "apple"], "c1": ["pear"]}
    got = D.keyword_table(concepts, a, b, common)
    # apple: 2 sources agree; then crisp (1 concept) before fruit (3 concepts); no junk, no "thing"
    assert got["c0"] == ["apple", "crisp", "fruit"]
    assert got["c1"] == ["pear", "fruit"]  # the rarer first
    assert got["c5"] == [] and got["c199"] == []


def test_iconset_names_of(tmp_path: Path):
    _write(tmp_path / "icons.json", {"prefix": "x", "icons": {"red-apple": {"body": ""}},
                                     "aliases": {"apple": {"parent": "red-apple"},
                                                 "apple-flipped": {"parent": "red-apple", "hFlip": True}}})
    _write(tmp_path / "info.json", {"name": "x"})
    s = D.IconSet(tmp_path)
    assert set(s.names_of("red-apple")) == {"red-apple", "apple", "apple-flipped"}
    assert set(s.names_of("apple")) == {"apple", "red-apple", "apple-flipped"}


def _art(rgb: tuple[int, int, int], size: int = 16) -> np.ndarray:
    im = np.zeros((size, size, 4), np.uint8)
    im[4:12, 4:12] = (*rgb, 255)  # a coloured square on transparency
    return im


def test_image_and_concept_colour():
    assert D.image_colour(_art((220, 30, 40))) == "red"
    assert D.image_colour(_art((250, 210, 40))) == "yellow"
    assert D.image_colour(_art((40, 160, 60))) == "green"
    assert D.image_colour(_art((30, 90, 220))) == "blue"
    assert D.image_colour(_art((150, 100, 60))) == "brown"  # dark or pale orange
    assert D.image_colour(_art((128, 128, 128))) is None  # grey: no hue to name
    assert D.image_colour(np.zeros((16, 16, 4), np.uint8)) is None  # empty
    half = _art((220, 30, 40))
    half[8:12, 4:12, :3] = (30, 90, 220)  # half red, half blue: no dominant colour
    assert D.image_colour(half) is None
    red, blue = _art((220, 30, 40)), _art((30, 90, 220))
    assert D.concept_colour(np.stack([red, red, blue])) == "red"  # 2 of 3 styles agree
    assert D.concept_colour(np.stack([red, blue])) is None
    assert D.concept_colour(np.stack([red])) is None  # one artist is not agreement


def test_colour_phrase():
    assert D.colour_phrase("banana", "yellow", ["banana", "fruit", "yellow"]) == "yellow banana"
    assert D.colour_phrase("red apple", "red", ["red apple"]) is None  # already says it
    assert D.colour_phrase("pear", "yellow", ["pear", "green"]) is None  # sources disagree
    assert D.colour_phrase("pear", None, ["pear"]) is None


def test_build_captions_order_and_filters():
    info = {"id": "1f435", "name": "monkey face", "aliases": ["monkey face", "a"], "flag": False}
    names = {"monkey face": "1f435", "banana": "1f34c", "monkey": "1f412"}
    caps = D.build_captions(info, {"annotation": "monkey face", "tags": ["ignored"]},
                            colour="brown",
                            icon_names=["monkey-face", "monkey-face-2", "monkey", "ape-head"],
                            keywords=["primate", "banana", "143", "Primate"], names=names)
    # name first; junk alias 'a', numbered icon names, other concepts' names and junk dropped
    assert caps == ["monkey face", "brown monkey face", "ape head", "primate"]
    flag = {"id": "1f1eb-1f1f7", "name": "France", "aliases": ["flag for France"], "flag": True}
    caps = D.build_captions(flag, {"annotation": "flag: France", "tags": []},
                            icon_names=["flag-france"], keywords=[])
    assert caps == ["France", "flag for France", "flag of France", "flag: France"]
    # No keyword sources (a Noto-only build): OpenMoji tags as they come
    caps = D.build_captions({"id": "x", "name": "x ray", "aliases": [], "flag": False},
                            {"annotation": "", "tags": ["bones"]})
    assert caps == ["x ray", "bones"]


def test_dedupe_ignores_punctuation_and_spacing():
    assert D._dedupe(["red apple", "redapple", "Red Apple", "flag: France", "flag France",
                      "keycap #", "keycap *"]) == ["red apple", "flag: France", "keycap #", "keycap *"]
