"""Masks of pen-stroke spots and dashed lines for the augmentation pipeline.

DALI has no operator that draws strokes (``fn.erase`` only blanks axis-aligned
rectangles), so the *masks* are drawn here with numpy and fed to the DALI
pipeline through ``external_source``; DALI applies them with its arithmetic
operators on the same device as the rest of the augmentation.  A mask is
``uint8 (S, S, 1)``: 0 leaves a pixel alone, `BLACK` sets it to 0, `WHITE` to
255 (later marks overwrite earlier ones).  Drawing is vectorised over a whole
batch; every random draw comes from one seeded generator, so a run with the
same seed and the same batch order gives the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NONE, BLACK, WHITE = 0, 1, 2


@dataclass(frozen=True)
class StrokeSpec:
    """How many marks of each kind an image gets (0..max, uniformly), and their size.

    Lengths and widths are fractions of the image side ``S``.
    """

    black_spots: int = 2          # pen strokes set to 0
    white_spots: int = 2          # pen strokes set to 255
    dashed_lines: int = 1         # straight dashed lines, black or white at random
    stroke_steps: tuple[int, int] = (1, 3)         # segments of a pen stroke's random walk
    stroke_step_length: tuple[float, float] = (0.06, 0.2)
    stroke_width: tuple[float, float] = (0.03, 0.07)
    line_length: tuple[float, float] = (0.3, 1.0)
    dash_length: tuple[float, float] = (0.06, 0.18)  # dash and gap lengths
    line_width: float = 0.03

    @property
    def any(self) -> bool:
        """Whether any mark is drawn at all."""
        return max(self.black_spots, self.white_spots, self.dashed_lines) > 0


class StrokeMasks:
    """Callable for DALI's batched ``external_source``: each call returns a list
    of ``batch_size`` masks ``uint8 (S, S, 1)`` drawn by `draw_masks`."""

    def __init__(self, spec: StrokeSpec, *, size: int, batch_size: int, seed: int):
        self.spec, self.size, self.batch_size = spec, int(size), int(batch_size)
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> list[np.ndarray]:
        masks = draw_masks(self.rng, self.batch_size, self.size, self.spec)
        return list(masks[..., None])


def draw_masks(rng: np.random.Generator, n: int, size: int, spec: StrokeSpec) -> np.ndarray:
    """``uint8 (n, size, size)`` masks of NONE / BLACK / WHITE pixels."""
    masks = np.zeros((n, size, size), np.uint8)
    for code, count in ((BLACK, spec.black_spots), (WHITE, spec.white_spots)):
        if count > 0:
            counts = rng.integers(0, count + 1, n)
            _draw(masks, _pen_strokes(rng, counts, size, spec), size, code)
    if spec.dashed_lines > 0:
        counts = rng.integers(0, spec.dashed_lines + 1, n)
        owner, pts, radius, line = _dashed_lines(rng, counts, size, spec)
        colour = np.where(rng.random(int(counts.sum())) < 0.5, BLACK, WHITE).astype(np.uint8)
        _draw(masks, (owner, pts, radius), size, colour[line])
    return masks


def _pen_strokes(rng, counts: np.ndarray, size: int, spec: StrokeSpec):
    """Points along a short random walk per stroke -> (owner image, (P, 2) points, (P,) radius)."""
    owner = np.repeat(np.arange(len(counts)), counts)
    k = len(owner)
    if k == 0:
        return owner, np.zeros((0, 2)), np.zeros(0)
    steps = rng.integers(spec.stroke_steps[0], spec.stroke_steps[1] + 1, k)
    start = rng.uniform(0, size, (k, 2))
    width = rng.uniform(*spec.stroke_width, k) * size
    max_steps = int(steps.max())
    ang = rng.uniform(0, 2 * np.pi, (k, 1)) + np.cumsum(rng.normal(0, 0.8, (k, max_steps)), axis=1)
    length = rng.uniform(*spec.stroke_step_length, (k, max_steps)) * size
    delta = np.stack([np.cos(ang), np.sin(ang)], -1) * length[..., None]
    delta[np.arange(max_steps)[None, :] >= steps[:, None]] = 0
    verts = np.concatenate([start[:, None], start[:, None] + np.cumsum(delta, axis=1)], axis=1)
    pts, seg_owner = _sample_polyline(verts, step=0.5)
    return owner[seg_owner], pts, np.maximum(width[seg_owner] / 2, 0.5)


def _dashed_lines(rng, counts: np.ndarray, size: int, spec: StrokeSpec):
    owner = np.repeat(np.arange(len(counts)), counts)
    k = len(owner)
    if k == 0:
        return owner, np.zeros((0, 2)), np.zeros(0), owner
    centre = rng.uniform(0, size, (k, 2))
    ang = rng.uniform(0, np.pi, k)
    length = rng.uniform(*spec.line_length, k) * size
    dash = rng.uniform(*spec.dash_length, k) * size
    gap = rng.uniform(*spec.dash_length, k) * size
    direction = np.stack([np.cos(ang), np.sin(ang)], -1)
    t = np.arange(0, float(length.max()) + 0.5, 0.5)                   # positions along the line
    keep = (t[None] <= length[:, None]) & (np.mod(t[None], (dash + gap)[:, None]) < dash[:, None])
    line, pos = np.nonzero(keep)
    pts = centre[line] + (t[pos] - length[line] / 2)[:, None] * direction[line]
    return owner[line], pts, np.full(len(line), max(spec.line_width * size / 2, 0.5)), line


def _sample_polyline(verts: np.ndarray, step: float):
    """Points every ``step`` px along each polyline ``verts (k, m, 2)`` -> ((P, 2), (P,) polyline)."""
    a, b = verts[:, :-1], verts[:, 1:]
    seg_len = np.linalg.norm(b - a, axis=-1)
    n = np.maximum(np.ceil(seg_len / step).astype(np.int64), 1)
    line, seg = np.nonzero(np.ones(seg_len.shape, bool))
    reps = n[line, seg]
    line_r, seg_r = np.repeat(line, reps), np.repeat(seg, reps)
    frac = (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)) / np.repeat(reps, reps)
    pts = a[line_r, seg_r] + frac[:, None] * (b[line_r, seg_r] - a[line_r, seg_r])
    return pts, line_r


def _draw(masks: np.ndarray, marks, size: int, code) -> None:
    """Set the pixels within each point's radius to ``code`` (scalar or per point)."""
    owner, pts, radius = marks[0], marks[1], marks[2]
    if len(pts) == 0:
        return
    r = int(np.ceil(radius.max()))
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    cy = np.floor(pts[:, 1]).astype(np.int64)[:, None] + oy.ravel()[None]
    cx = np.floor(pts[:, 0]).astype(np.int64)[:, None] + ox.ravel()[None]
    d2 = (cy + 0.5 - pts[:, 1:2]) ** 2 + (cx + 0.5 - pts[:, 0:1]) ** 2
    hit = (d2 <= radius[:, None] ** 2) & (cy >= 0) & (cy < size) & (cx >= 0) & (cx < size)
    p, j = np.nonzero(hit)
    value = code if np.isscalar(code) else np.asarray(code)[p]
    masks[owner[p], cy[p, j], cx[p, j]] = value
