"""Offline training set for the embedded emoji model: RGBA icons of emoji in many art styles.

Everything comes from package registries (Debian font + npm icon sets), so a build is reproducible
without model hubs. See ``src/canvasd/backends/emoji/DATA.md`` for sources, licences and counts.

Layout of the result (``out_dir/emoji{size}.npz`` + ``.json``):
  images (N,size,size,4) uint8, concept (N,) int32, style (N,) int32, split (N,) uint8 (1 = held out);
  json: concepts [{id, emoji, name, captions, ...}], styles [{name, phrase, package, version, licence...}].
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_FONT_SIZE = 109  # the only size the CBDT bitmap font has
DEFAULT_CACHE_DIR = Path("data/cache")
FORMAT_VERSION = 4  # bump when the output changes for the same inputs (invalidates the cache)
HELDOUT_SALT = "canvasd-heldout-v1"

# Exact versions (from `npm view <pkg> version`, 2026-11); bump deliberately, the dataset changes.
NPM_PINS: dict[str, str] = {
    "openmoji": "17.0.0",  # annotations + tags for captions (data/openmoji.json)
    "emojilib": "4.0.3",  # keywords for captions (dist/emoji-en-US.json)
    "@iconify-json/twemoji": "1.2.5",
    "@iconify-json/fluent-emoji-flat": "1.2.6",
    "@iconify-json/fluent-emoji": "1.2.7",
    "@iconify-json/noto": "1.2.9",
    "@iconify-json/noto-v1": "1.2.5",
    "@iconify-json/openmoji": "1.2.29",
    "@iconify-json/emojione": "1.2.3",
    "@iconify-json/emojione-v1": "1.2.3",
    "@iconify-json/fxemoji": "1.2.2",
    "@iconify-json/streamline-emojis": "1.2.4",
}


@dataclass(frozen=True)
class Source:
    key: str  # name used in `sources=[...]`
    style: str  # style name stored per image
    phrase: str  # how a prompt names the style
    package: str  # Debian or npm package
    uses_chars_map: bool = True  # Iconify chars.json (hex -> icon); otherwise matched by name
    family: str = ""  # styles of one family are the same artwork (never the held-out image)


# Order matters: it is the style index order, and chars-mapped sets come first so their icon names
# can be reused to match the name-only sets.
SOURCES: tuple[Source, ...] = (
    Source("noto", "noto", "glossy cartoon style", "fonts-noto-color-emoji", family="noto"),
    Source("twemoji", "twemoji", "simple flat style", "@iconify-json/twemoji"),
    Source("fluent-emoji-flat", "fluent flat", "flat style", "@iconify-json/fluent-emoji-flat"),
    # The font's own artwork as SVG (mean abs pixel difference to the font ~8/255): a twin.
    Source("noto-svg", "noto svg", "glossy cartoon style", "@iconify-json/noto", family="noto"),
    Source("openmoji", "openmoji", "outlined line-art style", "@iconify-json/openmoji"),
    Source("fluent-emoji", "fluent 3d", "3d style", "@iconify-json/fluent-emoji", False),
    Source("noto-v1", "noto v1", "retro blob style", "@iconify-json/noto-v1", False),
    Source("emojione", "emojione", "shaded gradient style", "@iconify-json/emojione", False),
    Source("emojione-v1", "emojione v1", "classic round style", "@iconify-json/emojione-v1", False),
    Source("fxemoji", "fxemoji", "bold stylized style", "@iconify-json/fxemoji", False),
    Source("streamline-emojis", "streamline", "thick outline cartoon style",
           "@iconify-json/streamline-emojis", False),
)
SOURCES_BY_KEY = {s.key: s for s in SOURCES}

# Licence and attribution for the Debian font (the npm sets carry theirs in info.json / LICENSE).
NOTO_FONT_LICENCE = {
    "licence": "OFL-1.1 (font) / Apache-2.0 (noto-emoji project)",
    "licence_url": "https://github.com/googlefonts/noto-emoji/blob/main/LICENSE",
    "author": "Google Inc.",
    "attribution": "Noto Color Emoji, (c) Google Inc., SIL Open Font License 1.1",
}


# ----------------------------------------------------------------------------------------------
# Concepts and captions


def concept_id(codepoints: Iterable[int]) -> str:
    """'0023-20e3' style id: 4-digit lowercase hex joined by '-', FE0F dropped."""
    return "-".join(f"{cp:04x}" for cp in codepoints if cp != 0xFE0F)


def hex_to_concept_id(hexcode: str) -> str:
    """Normalise an Iconify/OpenMoji hex key ('1F600', '0023-fe0f-20e3') to a concept id."""
    return concept_id(int(part, 16) for part in re.split(r"[-_ ]", hexcode.strip()) if part)


def _is_variant(text: str) -> bool:
    return any(0x1F3FB <= ord(c) <= 0x1F3FF or 0x1F9B0 <= ord(c) <= 0x1F9B3 for c in text)


def _is_flag(text: str) -> bool:
    cps = [ord(c) for c in text]
    return bool(cps) and (
        all(0x1F1E6 <= cp <= 0x1F1FF for cp in cps) or (cps[0] == 0x1F3F4 and len(cps) > 2
                                                         and 0xE0000 <= cps[1] <= 0xE007F))


def _readable(short_name: str) -> str:
    """':red_apple:' -> 'red apple'."""
    return short_name.strip(":").replace("_", " ").strip()


def slug(text: str) -> str:
    """Iconify-style icon name for free text: 'A button (blood type)' -> 'a-button-blood-type'."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("'", "")).strip("-")


def _dedupe(items: Iterable[str]) -> list[str]:
    """First spelling wins; spellings differing only in case, spaces or punctuation are one
    ('flag: France' / 'flag France', 'red apple' / fxemoji's icon name 'redapple')."""
    seen: set[str] = set()
    out = []
    for item in items:
        item = " ".join(item.split())
        key = re.sub(r"[^\w#*]", "", item.lower()) or item
        if item and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def emoji_universe() -> dict[str, dict]:
    """Fully-qualified named emoji without skin-tone/hair variants, keyed by concept id (sorted)."""
    import emoji

    out = {}
    for text, info in emoji.EMOJI_DATA.items():
        if info.get("status") != emoji.STATUS["fully_qualified"] or _is_variant(text):
            continue
        cid = concept_id(ord(c) for c in text)
        name = _readable(info["en"])
        aliases = [_readable(a) for a in info.get("alias", [])]
        out[cid] = {"id": cid, "emoji": text, "name": name, "aliases": aliases,
                    "flag": _is_flag(text)}
    return dict(sorted(out.items()))


def openmoji_annotations(npm_root: Path) -> dict[str, dict]:
    """concept id -> {annotation, tags} from the npm `openmoji` package."""
    path = npm_root / "openmoji" / "data" / "openmoji.json"
    out = {}
    for entry in json.loads(path.read_text(encoding="utf-8")):
        if entry.get("skintone"):
            continue
        tags = [t.strip() for field in ("tags", "openmoji_tags")
                for t in (entry.get(field) or "").split(",")]
        out[hex_to_concept_id(entry["hexcode"])] = {
            "annotation": (entry.get("annotation") or "").strip(),
            "tags": [t for t in tags if t],
        }
    return out


def emojilib_keywords(npm_root: Path) -> dict[str, list[str]]:
    """concept id -> keywords from npm `emojilib` (its first entry is a snake_case name)."""
    path = npm_root / "emojilib" / "dist" / "emoji-en-US.json"
    table = json.loads(path.read_text(encoding="utf-8"))
    return {concept_id(ord(c) for c in text): [k.replace("_", " ") for k in words]
            for text, words in table.items()}


# A keyword on more than this share of the concepts names a category ("flag", "face", "animal",
# "food", "person", "sign", "sports", "vehicle" ...), not a thing: trained alone it pulls the
# model to the mean of that many different images, and it crowds specific words out of the few
# captions a trainer samples. Measured on the 1,911 concepts (OpenMoji + emojilib), the 34 keywords
# on > 2.5 % (48+ concepts) are all of that kind or a colour alone ("red", 54; colour phrases say
# it better); the first kept are "white" (46), "black", "transportation", "japanese", "arrow".
MAX_KEYWORD_SHARE = 0.025


def is_junk_caption(text: str) -> bool:
    """Captions that say nothing about the picture: fewer than two letters (single characters,
    numbers, ':D', '13:00'), shortcode disambiguators ('cat2')."""
    t = text.strip().lower()
    return len(re.findall(r"[a-z]", t)) < 2 or bool(re.fullmatch(r"[a-z]+\d+", t))


def keyword_table(concepts: Iterable[str], *sources: dict[str, list[str]]) -> dict[str, list[str]]:
    """concept id -> keywords merged from `sources` (each concept id -> keywords), junk and
    category words (see MAX_KEYWORD_SHARE, counted over `concepts`) dropped.

    Order, because trainers read only the first few captions: words more sources agree on first
    (independent curators agreeing is the best evidence a word fits), then the rarer word (more
    specific), then alphabetical, so the order is stable."""
    concepts = list(concepts)
    words: dict[str, dict[str, int]] = {}  # cid -> word -> sources naming it
    for cid in concepts:
        agree: dict[str, int] = {}
        for src in sources:
            for w in {" ".join(k.lower().split()) for k in src.get(cid, [])}:
                if not is_junk_caption(w):
                    agree[w] = agree.get(w, 0) + 1
        words[cid] = agree
    freq: dict[str, int] = {}
    for agree in words.values():
        for w in agree:
            freq[w] = freq.get(w, 0) + 1
    limit = MAX_KEYWORD_SHARE * len(concepts)
    return {cid: sorted((w for w in agree if freq[w] <= limit),
                        key=lambda w, a=agree: (-a[w], freq[w], w))  # type: ignore[misc]
            for cid, agree in words.items()}


# Named hue ranges (degrees, HSV); brown is a dark orange/red. Used for colour phrases only.
_HUES: tuple[tuple[str, float, float], ...] = (
    ("red", -15, 15), ("orange", 15, 40), ("yellow", 40, 70), ("green", 70, 165),
    ("blue", 165, 255), ("purple", 255, 290), ("pink", 290, 345))
COLOUR_WORDS = frozenset({*(h[0] for h in _HUES), "brown", "white", "black", "grey", "gray",
                          "gold", "golden", "silver", "violet", "crimson", "beige"})


def image_colour(rgba: np.ndarray) -> str | None:
    """The colour name of one RGBA image when one colour clearly dominates: >= 30 % of the opaque
    pixels are saturated and >= 60 % of those share one named hue. None for grey, black, white,
    or mixed art (faces with hair and skin, flags, rainbows)."""
    px = rgba.reshape(-1, 4).astype(np.float32) / 255
    px = px[px[:, 3] > 0.5, :3]
    if len(px) == 0:
        return None
    mx, mn = px.max(1), px.min(1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    chroma = (sat >= 0.35) & (mx >= 0.25)
    if chroma.mean() < 0.3:
        return None
    r, g, b = px[chroma].T
    mx, mn = mx[chroma], mn[chroma]
    d = np.maximum(mx - mn, 1e-6)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60
    hue = np.where(hue >= 345, hue - 360, hue)
    names = np.full(len(hue), "", dtype=object)
    for name, lo, hi in _HUES:
        names[(hue >= lo) & (hue < hi)] = name
    # brown: a dark red/orange, or a pale orange (tan: bread, camel, a dog's fur)
    names[((hue >= -15) & (hue < 45) & (mx < 0.6)) | ((hue >= 15) & (hue < 45) & (sat[chroma] < 0.6))] = "brown"
    values, counts = np.unique(names, return_counts=True)
    best = int(counts.argmax())
    return str(values[best]) if counts[best] >= 0.6 * len(hue) and values[best] else None


def concept_colour(images: np.ndarray) -> str | None:
    """A colour the concept's art agrees on: the dominant colour of at least two of its images
    (different artists' styles) and of at least two thirds of them; else None."""
    names = [image_colour(im) for im in images]
    for name in set(names) - {None}:
        n = names.count(name)
        if n >= 2 and 3 * n >= 2 * len(names):
            return name
    return None


def colour_phrase(name: str, colour: str | None, captions: Iterable[str]) -> str | None:
    """'<colour> <name>' ("yellow banana") unless a caption already says a colour: a phrase
    naming it ("red apple") makes it redundant, another colour word means the sources disagree."""
    if colour is None:
        return None
    words = {w for c in captions for w in re.findall(r"[a-z]+", c.lower())}
    if words & (COLOUR_WORDS - {colour}) or any(
            colour in c.lower().split() and len(c.split()) > 1 for c in captions):
        return None
    return f"{colour} {name}"


def build_captions(info: dict, annotations: dict | None = None, *,
                   colour: str | None = None, icon_names: Iterable[str] = (),
                   keywords: Iterable[str] | None = None,
                   names: dict[str, str] | None = None) -> list[str]:
    """Name first (trainers rely on caption 0), then the phrases, then single keywords:
    aliases, 'flag of X' for flags, OpenMoji's annotation (the CLDR name), a colour phrase of the
    art, the matched Iconify icons' names; then `keywords` (from `keyword_table`; without it the
    OpenMoji tags as they come). Junk (see `is_junk_caption`) is dropped after caption 0.

    names (lowercase name/alias -> concept id, see `name_table`): an icon name or keyword that is
    another concept's name is dropped: "banana" on the monkey face, "cheese wedge" on the mouse,
    "cat" on the tiger would teach the model that prompt means a different picture."""
    names = names or {}

    def own(text: str) -> bool:
        return names.get(text.lower(), info.get("id")) == info.get("id")

    caps = [*info["aliases"]]
    if info["flag"] and not info["name"].lower().startswith("flag"):
        caps.append(f"flag of {info['name']}")
    if annotations:
        caps.append(annotations["annotation"])
    caps.append(colour_phrase(info["name"], colour, [info["name"], *caps]) or "")
    if not info["flag"]:  # flags' icon names only respell the country ('flag-for-flag-china')
        caps.extend(n.replace("-", " ") for n in icon_names
                    if not re.search(r"-\d+$", n) and own(n.replace("-", " ")))
    caps.extend(k for k in (keywords if keywords is not None else (annotations or {}).get("tags", []))
                if own(k))
    return _dedupe([info["name"], *(c for c in caps if c and not is_junk_caption(c))])


def name_table(universe: dict[str, dict]) -> dict[str, str]:
    """lowercase name or alias -> concept id (the first concept by id wins a shared alias)."""
    out: dict[str, str] = {}
    for cid, info in universe.items():
        for text in [info["name"], *info["aliases"]]:
            out.setdefault(text.lower(), cid)
    return out


def heldout_style(concept: str, styles: Iterable[str],
                  family: dict[str, str] | None = None) -> str:
    """The one style of `concept` held out: smallest salted hash. Deterministic, and stable
    under adding/removing other sources (only a new smaller hash can change the choice).

    A style whose twin (same `family`) is also present is not eligible, else the "unseen" image
    would be in train under the twin's name."""
    styles = list(styles)
    family = family or {}
    fam = [family.get(st) or st for st in styles]
    eligible = [st for st, f in zip(styles, fam) if fam.count(f) == 1] or styles

    def h(style: str) -> int:
        return int(hashlib.sha256(f"{HELDOUT_SALT}:{concept}:{style}".encode()).hexdigest(), 16)
    return min(eligible, key=h)


# ----------------------------------------------------------------------------------------------
# Sources: install / locate


def _npm_installed_version(npm_root: Path, package: str) -> str | None:
    meta = npm_root / package / "package.json"
    if not meta.exists():
        return None
    return json.loads(meta.read_text()).get("version")


def ensure_npm_packages(cache_dir: Path) -> Path:
    """Install the pinned npm packages under cache_dir/npm (no-op when already there)."""
    prefix = cache_dir / "npm"
    root = prefix / "node_modules"
    if all(_npm_installed_version(root, p) == v for p, v in NPM_PINS.items()):
        return root
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to fetch the icon sets: install Node.js/npm "
                           "(e.g. `apt-get install npm`) or pass sources=['noto']")
    prefix.mkdir(parents=True, exist_ok=True)
    # Always the full pinned list in one call: npm prunes packages it was not asked for.
    cmd = [npm, "install", "--prefix", str(prefix), "--no-save", "--no-audit", "--no-fund",
           *(f"{p}@{v}" for p, v in NPM_PINS.items())]
    subprocess.run(cmd, check=True)
    missing = [p for p, v in NPM_PINS.items() if _npm_installed_version(root, p) != v]
    if missing:
        raise RuntimeError(f"npm install did not provide {missing}")
    return root


def ensure_noto_font() -> Path:
    if not NOTO_FONT.exists():
        raise FileNotFoundError(
            f"{NOTO_FONT} not found: install it with `apt-get install fonts-noto-color-emoji`")
    return NOTO_FONT


def _noto_font_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "fonts-noto-color-emoji"],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------
# Iconify sets


@dataclass(frozen=True)
class IconTask:
    """One icon to rasterise: a complete SVG plus the Iconify flips/rotation to apply after."""
    svg: str
    hflip: bool = False
    vflip: bool = False
    rotate: int = 0  # quarter turns clockwise


class IconSet:
    def __init__(self, root: Path):
        self.data = json.loads((root / "icons.json").read_text(encoding="utf-8"))
        self.info = json.loads((root / "info.json").read_text(encoding="utf-8"))
        chars_path = root / "chars.json"
        chars = json.loads(chars_path.read_text()) if chars_path.exists() else {}
        self.chars = {hex_to_concept_id(k): v for k, v in chars.items()}
        self.icons: dict = self.data["icons"]
        self.aliases: dict = self.data.get("aliases", {})
        self._children: dict[str, list[str]] = {}
        for alias, entry in self.aliases.items():
            self._children.setdefault(entry.get("parent", ""), []).append(alias)

    def names(self) -> Iterator[str]:
        yield from self.icons
        yield from self.aliases

    def names_of(self, name: str) -> list[str]:
        """`name`, its alias parent, and the aliases pointing to either (caption candidates)."""
        parent = self.aliases.get(name, {}).get("parent", name)
        return [name, parent, *self._children.get(parent, [])]

    def task(self, name: str) -> IconTask | None:
        """Resolve aliases (with their transforms) and build the SVG for `name`."""
        hflip = vflip = False
        rotate = 0
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            alias = self.aliases[name]
            hflip ^= bool(alias.get("hFlip"))
            vflip ^= bool(alias.get("vFlip"))
            rotate += int(alias.get("rotate", 0))
            name = alias["parent"]
        icon = self.icons.get(name)
        if icon is None:
            return None
        hflip ^= bool(icon.get("hFlip"))
        vflip ^= bool(icon.get("vFlip"))
        rotate += int(icon.get("rotate", 0))
        left, top = icon.get("left", self.data.get("left", 0)), icon.get("top", self.data.get("top", 0))
        w = icon.get("width", self.data.get("width", 16))
        h = icon.get("height", self.data.get("height", 16))
        svg = (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
               f'width="{w}" height="{h}" viewBox="{left} {top} {w} {h}">{icon["body"]}</svg>')
        return IconTask(svg, hflip, vflip, rotate % 4)


# Legacy icon names whose art no longer fits the concept they name-match: U+1F52B became a
# water pistol in 2016-18, the old sets still draw a revolver.
LEGACY_ICON_NAMES = frozenset({"pistol"})


def _name_variants(icon_name: str) -> list[str]:
    """Spellings of an icon name to try: as is, without a numbered-variant suffix (streamline's
    'baby-1'), without the old 'flag-for-' prefix (emojione's 'flag-for-china')."""
    out = [icon_name]
    stripped = re.sub(r"-\d+$", "", icon_name)
    if stripped != icon_name and stripped:
        out.append(stripped)
    if icon_name.startswith("flag-for-"):
        out.append(icon_name[len("flag-for-"):])
    return out


def _universe_name_tables(universe: dict[str, dict]) -> list[dict[str, str]]:
    """slug -> concept tables, best first: CLDR names and aliases (plus 'flag-X' for flags), then
    Unicode character names of single-code-point emoji (older sets use them: 'frog-face',
    'direct-hit', fxemoji's 'blackheartsuit')."""
    names: dict[str, str] = {}
    uninames: dict[str, str] = {}
    for cid, info in universe.items():
        for text in [info["name"], *info["aliases"]]:
            names.setdefault(slug(text), cid)
            if info["flag"]:
                names.setdefault(slug(f"flag {text}"), cid)
        cps = [c for c in info["emoji"] if c != "\ufe0f"]
        if len(cps) == 1:
            uni = unicodedata.name(cps[0], "")
            if uni:
                uninames.setdefault(slug(uni), cid)
    return [names, uninames]


def match_by_name(iconset: IconSet, name_index: dict[str, str],
                  universe: dict[str, dict]) -> dict[str, str]:
    """concept id -> icon name for a set without chars.json.

    Tables, best first: names the chars-mapped sets use for an emoji, the emoji package's names and
    aliases, Unicode character names. Each is tried with the icon's name variants, hyphenated and
    then compacted (fxemoji writes 'admissiontickets'). Per concept the best-ranked icon wins."""
    tables = [name_index, *_universe_name_tables(universe)]
    compact_tables = [{k.replace("-", ""): v for k, v in t.items()} for t in tables]
    best: dict[str, tuple[int, str]] = {}
    for order, icon_name in enumerate(iconset.names()):
        if icon_name in LEGACY_ICON_NAMES:
            continue
        found = None
        for tier, (table, ctable) in enumerate(zip(tables, compact_tables)):
            for vi, variant in enumerate(_name_variants(icon_name)):
                cid = table.get(variant)
                penalty = 0
                if cid is None:
                    cid, penalty = ctable.get(variant.replace("-", "")), 1
                if cid is not None:
                    m = re.search(r"-(\d+)$", icon_name) if vi else None
                    number = min(int(m.group(1)), 99) if m else 0  # prefer 'x-1' over 'x-2'
                    found = (cid, ((tier * 100 + vi * 10 + penalty) * 100 + number) * 100_000
                             + order)
                    break
            if found:
                break
        if found and (found[0] not in best or found[1] < best[found[0]][0]):
            best[found[0]] = (found[1], icon_name)
    return {cid: name for cid, (_, name) in best.items()}


# ----------------------------------------------------------------------------------------------
# Rasterising (runs in worker processes)

_FONT = None


def square_resize(img: Image.Image, size: int) -> np.ndarray | None:
    """Crop to the alpha bbox, pad to a centred transparent square, LANCZOS to size.
    None when the image is empty (e.g. a glyph the font does not have)."""
    img = img.convert("RGBA")
    bbox = img.getchannel("A").getbbox()
    if bbox is None:
        return None
    img = img.crop(bbox)
    side = max(img.size)
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    # Pillow resizes RGBA premultiplied, so transparent pixels' colour does not bleed in.
    return np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def _render_noto(args: tuple[str, str, int]) -> tuple[str, np.ndarray | None]:
    global _FONT
    from PIL import ImageDraw, ImageFont

    cid, text, size = args
    if _FONT is None:
        _FONT = ImageFont.truetype(str(NOTO_FONT), NOTO_FONT_SIZE)
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=_FONT, embedded_color=True)
    # One glyph is ~136 px wide; wider means the font lacks the ZWJ sequence and drew its parts.
    if right - left > 1.5 * NOTO_FONT_SIZE or right <= left:
        return cid, None
    img = Image.new("RGBA", (right - left + 8, bottom - top + 8), (0, 0, 0, 0))
    ImageDraw.Draw(img).text((4 - left, 4 - top), text, font=_FONT, embedded_color=True)
    return cid, square_resize(img, size)


def _render_svg(args: tuple[str, IconTask, int]) -> tuple[str, np.ndarray | None]:
    import io

    import cairosvg

    cid, task, size = args
    render_px = max(4 * size, 128)  # supersample; the crop then LANCZOS does the antialiasing
    def rasterise(svg: str) -> bytes:
        return cairosvg.svg2png(bytestring=svg.encode("utf-8"), output_width=render_px,
                                output_height=render_px)

    try:
        png = rasterise(task.svg)
    except Exception:  # noqa: BLE001 - one bad icon must not stop the build
        # Two Fluent 3D icons have a gradient with skewY(-90) (a singular matrix), which cairo
        # rejects as "out of memory"; browsers draw nothing for it, so drop the skew.
        try:
            png = rasterise(re.sub(r"skew[XY]\(\s*-?90\s*\)", "scale(1)", task.svg))
        except Exception:  # noqa: BLE001
            return cid, None
    img = Image.open(io.BytesIO(png))
    if task.hflip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if task.vflip:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if task.rotate:
        img = img.rotate(-90 * task.rotate, expand=True)
    return cid, square_resize(img, size)


# ----------------------------------------------------------------------------------------------
# Build


def _outputs(out_dir: Path, size: int) -> tuple[Path, Path]:
    return out_dir / f"emoji{size}.npz", out_dir / f"emoji{size}.json"


def _build_key(size: int, sources: list[str], limit: int | None) -> dict:
    return {"format": FORMAT_VERSION, "size": size, "sources": sources, "limit": limit,
            "npm": NPM_PINS if any(s != "noto" for s in sources) else {}}


def build_dataset(out_dir: Path, size: int = 64, workers: int = 2,
                  sources: list[str] | None = None, limit: int | None = None,
                  cache_dir: Path = DEFAULT_CACHE_DIR, openmoji_captions: bool | None = None
                  ) -> Path:
    """Build (or reuse) ``out_dir/emoji{size}.npz`` + ``.json``; returns the .npz path.

    sources: keys of SOURCES (default all). limit: only the first K concepts by id (for tests).
    openmoji_captions: add the npm caption sources (OpenMoji annotation/tags, emojilib keywords)
    to captions; default: when npm is used anyway. Iconify icon names
    and colour phrases come from the selected sources themselves.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    sources = list(sources) if sources is not None else [s.key for s in SOURCES]
    unknown = [s for s in sources if s not in SOURCES_BY_KEY]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; known: {list(SOURCES_BY_KEY)}")
    selected = [s for s in SOURCES if s.key in sources]  # canonical order
    uses_npm = any(s.key != "noto" for s in selected)
    if openmoji_captions is None:
        openmoji_captions = uses_npm
    key = _build_key(size, [s.key for s in selected], limit) | {"openmoji_captions":
                                                               openmoji_captions}
    npz_path, json_path = _outputs(out_dir, size)
    if npz_path.exists() and json_path.exists():
        try:
            if json.loads(json_path.read_text(encoding="utf-8")).get("build") == key:
                return npz_path
        except (OSError, json.JSONDecodeError):
            pass

    if "noto" in sources:
        ensure_noto_font()
    npm_root = ensure_npm_packages(Path(cache_dir)) if (uses_npm or openmoji_captions) else None

    universe = emoji_universe()
    annotations: dict[str, dict] = {}
    keywords: dict[str, list[str]] | None = None  # None: a Noto-only build, no keyword sources
    if openmoji_captions and npm_root:
        annotations = openmoji_annotations(npm_root)
        # over the whole universe (not `limit`), so a concept's keywords do not depend on limit
        keywords = keyword_table(universe, {c: a["tags"] for c, a in annotations.items()},
                                 emojilib_keywords(npm_root))
    names = name_table(universe)  # the whole universe: a limit build keeps the same captions
    if limit is not None:
        universe = dict(list(universe.items())[:limit])

    # Name index from the chars-mapped sets (all of them, selected or not, for better matching).
    iconsets: dict[str, IconSet] = {}
    name_index: dict[str, str] = {}
    if npm_root is not None:
        for src in SOURCES:
            if src.key == "noto":
                continue
            iconset = IconSet(npm_root / src.package)
            if src.key in sources:
                iconsets[src.key] = iconset
            if src.uses_chars_map:
                for cid, icon_name in iconset.chars.items():
                    if cid in universe:
                        name_index.setdefault(icon_name, cid)
                        parent = iconset.aliases.get(icon_name, {}).get("parent")
                        if parent:
                            name_index.setdefault(parent, cid)

    images: list[np.ndarray] = []
    concept_of: list[str] = []
    style_of: list[int] = []
    per_source: dict[str, dict] = {}
    icon_names: dict[str, list[str]] = {}  # concept -> names of its matched icons (captions)
    ctx = multiprocessing.get_context("spawn")  # no fork of a parent that may hold torch threads
    with ctx.Pool(max(1, workers)) as pool:
        for style_idx, src in enumerate(selected):
            if src.key == "noto":
                jobs = [(cid, info["emoji"], size) for cid, info in universe.items()]
                fn = _render_noto
            else:
                iconset = iconsets[src.key]
                if src.uses_chars_map:
                    mapping = {cid: n for cid, n in iconset.chars.items() if cid in universe}
                else:
                    mapping = match_by_name(iconset, name_index, universe)
                jobs = []
                for cid, icon_name in mapping.items():
                    icon_names.setdefault(cid, []).extend(iconset.names_of(icon_name))
                for cid in sorted(mapping):
                    task = iconset.task(mapping[cid])
                    if task is not None:
                        jobs.append((cid, task, size))
                fn = _render_svg
            got: dict[str, np.ndarray] = {}
            for cid, arr in tqdm(pool.imap_unordered(fn, jobs, chunksize=16), total=len(jobs),
                                 desc=src.style, unit="img"):
                if arr is not None:
                    got[cid] = arr
            for cid in sorted(got):  # deterministic order regardless of worker timing
                images.append(got[cid])
                concept_of.append(cid)
                style_of.append(style_idx)
            per_source[src.key] = {"matched": len(jobs), "images": len(got)}

    # Concepts: those with at least one image, by id.
    concept_ids = sorted(set(concept_of))
    cindex = {cid: i for i, cid in enumerate(concept_ids)}
    styles_of_concept: dict[str, list[str]] = {}
    for cid, s in zip(concept_of, style_of):
        styles_of_concept.setdefault(cid, []).append(selected[s].style)
    family = {src.style: src.family for src in selected if src.family}
    held = {cid: heldout_style(cid, st, family)
            for cid, st in styles_of_concept.items() if len(st) >= 3}
    split = np.array([1 if held.get(cid) == selected[s].style else 0
                      for cid, s in zip(concept_of, style_of)], dtype=np.uint8)

    n = len(images)
    arrays = {
        "images": np.stack(images) if n else np.zeros((0, size, size, 4), np.uint8),
        "concept": np.array([cindex[c] for c in concept_of], dtype=np.int32),
        "style": np.array(style_of, dtype=np.int32),
        "split": split,
    }
    concepts = []
    images_of: dict[str, list[int]] = {}
    for i, cid in enumerate(concept_of):
        images_of.setdefault(cid, []).append(i)
    for cid in concept_ids:
        info = universe[cid]
        # Colour phrases need art that agrees: a twin (noto / noto svg) would count twice.
        seen_family: set[str] = set()
        picks = []
        for i in images_of[cid]:
            src = selected[style_of[i]]
            if src.style == held.get(cid):
                continue  # the held-out image stays unseen, captions included
            if (src.family or src.key) not in seen_family:
                seen_family.add(src.family or src.key)
                picks.append(images[i])
        kw = keywords.get(cid, []) if keywords is not None else None
        concepts.append({"id": cid, "emoji": info["emoji"], "name": info["name"],
                         "captions": build_captions(
                             info, annotations.get(cid),
                             colour=None if info["flag"] or not picks else concept_colour(np.stack(picks)),
                             icon_names=icon_names.get(cid, ()), keywords=kw, names=names),
                         # the single-word keywords (also in captions): weak alone, good to mix in
                         "tags": kw if kw is not None else [],
                         "styles": sorted(set(styles_of_concept[cid])),
                         "heldout_style": held.get(cid)})
    styles = []
    for style_idx, src in enumerate(selected):
        if src.key == "noto":
            meta = {"version": _noto_font_version(), **NOTO_FONT_LICENCE}
        else:
            info = iconsets[src.key].info
            lic = info.get("license", {})
            author = info.get("author", {})
            meta = {"version": _npm_installed_version(npm_root, src.package),
                    "licence": lic.get("spdx") or lic.get("title"),
                    "licence_url": lic.get("url"), "author": author.get("name"),
                    "attribution": f"{info.get('name')} by {author.get('name')} "
                                   f"({author.get('url')}), {lic.get('title')}"}
        styles.append({"name": src.style, "phrase": src.phrase, "source": src.key,
                       "package": src.package, **meta,
                       "images": int((arrays["style"] == style_idx).sum()),
                       **per_source[src.key]})

    out_dir.mkdir(parents=True, exist_ok=True)
    # Write to temp names then rename, so an interrupted build never looks cached.
    tmp_npz = npz_path.with_suffix(".tmp.npz")
    np.savez(tmp_npz, **arrays)
    meta_doc = {"build": key, "size": size, "count": n, "heldout": int(split.sum()),
                "concepts": concepts, "styles": styles}
    tmp_json = json_path.with_suffix(".tmp.json")
    tmp_json.write_text(json.dumps(meta_doc, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp_npz.replace(npz_path)
    tmp_json.replace(json_path)
    print(f"wrote {npz_path}: {n} images, {len(concepts)} concepts, {len(styles)} styles, "
          f"{int(split.sum())} held out")
    return npz_path
