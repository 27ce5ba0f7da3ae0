"""PNG contact sheets a person looks at: the review queue and the augmentations.

Pillow draws them (decoding a few hundred files for a sheet is not worth a
DALI pipeline); the model never sees these images.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from gpupipe.table import atomic_file

CELL = 72           # pixels per thumbnail
CAPTION = 24        # caption strip under each thumbnail


def _save_png(image, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    with atomic_file(path, "wb") as fh:
        fh.write(buf.getvalue())
    return Path(path)


def scaled_image(path: str, locator: str | None, size: int | None):
    """The image as RGB (Pillow), its longer side scaled to ``size``
    (nearest-neighbour when enlarging, so small images stay sharp); None: as
    stored.  Raises on an unreadable or undecodable file.  The review sheets,
    the report and the review page show images through it."""
    from PIL import Image

    from gpupipe.io.sources import read_one

    data = read_one(path, locator)
    if isinstance(data, OSError):
        raise data
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
    if size:
        s = size / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))),
                       Image.Resampling.NEAREST if s >= 1 else Image.Resampling.LANCZOS)
    return im


def _thumb(path: str, locator: str | None = None):
    from PIL import Image

    try:
        return scaled_image(path, locator if isinstance(locator, str) else None, CELL)
    except Exception:      # an unreadable file gets a blank cell, not a failed sheet
        return Image.new("RGB", (CELL, CELL), (255, 0, 255))


def queue_sheet(q: pd.DataFrame, path: str | os.PathLike, *, columns: int = 12, limit: int = 480) -> Path:
    """A grid of the queue's images (first ``limit``), captioned ``given -> suggested``
    (worst), ``given`` (best, seed) or what the automatic policy did (audit:
    ``given -> its label``, ``label rm``, ``label ? suggested`` for a row
    left open or a relabel held for a person, the held ones numbered ``held N``),
    in queue order."""
    from PIL import Image, ImageDraw

    q = q.iloc[:limit]
    n = max(len(q), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    sheet = Image.new("RGB", (cols * CELL, rows * (CELL + CAPTION)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    has_suggestion = "suggested_label" in q.columns
    for i, r in enumerate(q.itertuples(index=False)):
        x, y = (i % cols) * CELL, (i // cols) * (CELL + CAPTION)
        im = _thumb(r.path, getattr(r, "locator", None))
        sheet.paste(im, (x + (CELL - im.width) // 2, y + (CELL - im.height) // 2))
        given = str(r.label)[:10]
        sugg = str(r.suggested_label)[:10] if has_suggestion and r.suggested_label is not None else None
        text = f"{given}>{sugg}" if r.queue == "worst" and sugg is not None and sugg != given else given
        if r.queue == "audit":           # what the automatic policy did: given > its label, removed, left open
            text = (f"{str(r.given_label)[:8]}>{given}" if r.auto_action == "relabel"
                    else f"{given[:8]} rm" if r.auto_action == "remove"
                    else f"{given}?{sugg}" if sugg is not None and sugg != given else f"{given}?")
        colour = (200, 0, 0) if r.queue == "worst" else (0, 110, 0) if r.queue == "best" else (0, 0, 160)
        draw.text((x + 2, y + CELL + 2), text, fill=colour)
        held = r.queue == "audit" and r.auto_action == "held"   # a relabel waiting for a person
        draw.text((x + 2, y + CELL + 12), f"{'held' if held else r.queue} {i + 1}", fill=(110, 110, 110))
    return _save_png(sheet, path)


def image_grid(rows: list[np.ndarray], path: str | os.PathLike, *, scale: int = 2) -> Path:
    """Rows of uint8 (S, S, C) images -> one PNG (each image enlarged ``scale`` x)."""
    from PIL import Image

    size = rows[0][0].shape[0] * scale
    width = max(len(r) for r in rows)
    sheet = Image.new("RGB", (width * (size + 2), len(rows) * (size + 2)), (255, 255, 255))
    for j, r in enumerate(rows):
        for i, img in enumerate(r):
            arr = img[..., 0] if img.shape[-1] == 1 else img
            im = Image.fromarray(arr).convert("RGB").resize((size, size), Image.Resampling.NEAREST)
            sheet.paste(im, (i * (size + 2), j * (size + 2)))
    return _save_png(sheet, path)
