"""Contact sheets: RGBA images on a checkerboard (so transparency shows) with a caption under each."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def checkerboard(size: int, square: int = 8) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for y in range(0, size, square):
        for x in range(0, size, square):
            if (x // square + y // square) % 2:
                d.rectangle([x, y, x + square - 1, y + square - 1], fill=(214, 214, 214))
    return img


def contact_sheet(
    images: Sequence[Image.Image], labels: Sequence[str], cols: int = 8, cell: int = 128, text_lines: int = 2
) -> Image.Image:
    font = ImageFont.load_default(size=11)
    line_h = 13
    rows = (len(images) + cols - 1) // cols
    h_cell = cell + 4 + text_lines * line_h + 4
    sheet = Image.new("RGB", (cols * (cell + 6) + 6, rows * (h_cell + 6) + 6), (255, 255, 255))
    board = checkerboard(cell)
    draw = ImageDraw.Draw(sheet)
    chars = max(8, cell // 6)
    for i, (im, label) in enumerate(zip(images, labels)):
        x, y = 6 + (i % cols) * (cell + 6), 6 + (i // cols) * (h_cell + 6)
        tile = board.copy()
        tile.paste(im.convert("RGBA").resize((cell, cell), Image.Resampling.NEAREST), (0, 0),
                   im.convert("RGBA").resize((cell, cell), Image.Resampling.NEAREST))
        sheet.paste(tile, (x, y))
        for j, line in enumerate(textwrap.wrap(label, chars)[:text_lines]):
            draw.text((x, y + cell + 4 + j * line_h), line, fill=(0, 0, 0), font=font)
    return sheet
