"""The photo route of the same-picture check: real duplicates of colour photographs.

Real near duplicates of one camera shot (ciFAIR's same-shot pairs in CIFAR-10)
combine a 5-15% crop with rescaling, a colour or contrast shift and a
re-encode: the default check's band-pass scores their median 0.97, under its
0.99, and it grouped 6% of them.  The *registered similarity* searches the zoom
as well and compares a lower band in gray, where rescaling and JPEG change
little and a colour or contrast shift is a gain and offset that a correlation
absorbs:

    r(a, b) = max over zoom z in REG_ZOOMS (0.8-1.25) and shift (dy, dx), |d| <= 4 px,
              of the Pearson correlation of g(a)'s central 22x22 window and
              g(zoom_z(b)) shifted by (dy, dx),

g the gray difference of Gaussians REG_SIGMAS of the standardised 32x32
thumbnail.  Coarse to fine: every zoom at 16 px over shifts of up to 4 px (of
32); pairs under REG_COARSE_MIN stop there; then at 32 px the best zoom and its
two half-step neighbours over the 3x3 shifts around the coarse one, with the
sub-pixel peak.

A correlation means little where the images hold few independent values:
smooth or simple pictures (upscaled digits, a ship on a plain sea) align with
many others at r = 0.9.  So the decision is on its significance,

    z = atanh(r) * sqrt(n_eff - 3)                                     (Fisher)
    n_eff = 22^2 / sum over lags |l| <= REG_LAGS of rho_a(l) rho_b(l) * sqrt(s)

rho the two band-passes' own autocorrelations (Bartlett: an image of large
smooth shapes has few independent pixels) and s = min(1, 3 PR / 22^2) the
smaller sparsity of the two, PR = (sum f^2)^2 / sum f^4 the participation ratio
of the band-pass energy (22^2 / 3 for texture everywhere; a small object on
plain sky carries only the values of its outline).  A pair is the same picture
when r >= REG_MIN_R (the same picture, not a related one: two frames of one
scene correlate significantly at r = 0.7) and z >= DEFAULT_MIN_REGISTERED_Z.
Both were chosen on one half of ciFAIR's development pairs and reported on
the other (benchmarks/bench_cifair_roc.py, benchmarks/RESULTS.md §18).

The gray band-pass ignores colour, and look-alikes of one class and pose (a bay
horse for a chestnut one, two airliners in different liveries) align at r
0.86-0.95, z 7-12: 6 of a seeded 100 accepted pairs on CIFAR-10 were such.  So
an accepted pair must also pass a colour test at the alignment found
(`colour_fit`): the R^2 of one global affine colour map from a's blurred pixels
to b's, >= MIN_COLOUR_FIT, and >= MIN_COLOUR_FIT_WEAK where z < STRONG_Z.  A
re-processed copy (white balance, saturation, contrast, gamma, even a white car
turned teal) is one map of its colours; a look-alike puts other colours in
some places.  Chosen on pairs judged by eye and ciFAIR's choose half
(benchmarks/bench_colour_fit.py, RESULTS.md §24).

The route is for colour photographs: `PairCheck` applies it to pairs of colour
images only.  On gray 32 px digits (8x8 scans upscaled) no threshold of this
family separates different writers' digits: ``--verify photo`` on the demo's
digits called 698 rows duplicates at pair precision 0.016 before that rule.

Used by `gpupipe.hashing.verify.PairCheck` with ``registered=True``
(``gpupipe dedup --verify photo``); written over numpy | CuPy from the check's
own primitives (band-pass, zoom matrices, correlation surfaces).
"""

from __future__ import annotations

import numpy as np

from gpupipe.hashing.verify import (
    COARSE_SHIFT, MARGIN, THUMB, _centre, _gauss, _peaks_at, _sandwich, _to_host, _zoom, band_pass,
    correlations,
)

REG_SIGMAS = (0.7, 4.0)
REG_COARSE_SIGMAS = (1.0, 4.0)
REG_ZOOMS = tuple(float(z) for z in np.exp(np.linspace(np.log(0.8), np.log(1.25), 9)))
REG_HALF_STEP = float(np.sqrt(REG_ZOOMS[1] / REG_ZOOMS[0]))
REG_LAGS = 10
REG_MIN_R = 0.85
REG_COARSE_MIN = 0.7        # 16 px, best zoom: every ciFAIR same-shot pair >= 0.79, 10% of CIFAR's candidates
DEFAULT_MIN_REGISTERED_Z = 6.0
COLOUR_SIGMA = 1.4          # px at 32: the blur before the colour map is fitted (`colour_fit`)
MIN_COLOUR_FIT = 0.85       # R^2 of one global colour map (`colour_fit`), every pair the route accepts
MIN_COLOUR_FIT_WEAK = 0.91  # ... and where the structure's significance is under STRONG_Z
STRONG_Z = 9.0


def min_colour_fit(z, xp=np):
    """(P,) float32 the colour fit a pair of registered significance ``z`` must reach:
    MIN_COLOUR_FIT_WEAK under STRONG_Z, MIN_COLOUR_FIT from there."""
    return xp.where(z >= STRONG_Z, xp.float32(MIN_COLOUR_FIT), xp.float32(MIN_COLOUR_FIT_WEAK))


def reg_filters(thumbs, xp=np):
    """Per image, the registered similarity's inputs: (gray band-pass (K, 1, 32, 32),
    coarse gray band-pass (K, 1, 16, 16), autocorrelation of the band-pass's central
    window over lags up to REG_LAGS, 1 at lag 0 (K, (2 REG_LAGS + 1)^2), sparsity of
    its energy in (0, 1] (K, 1)) float32."""
    f = band_pass(thumbs, colour=False, sigmas=REG_SIGMAS, xp=xp)
    w = f[:, 0, MARGIN:THUMB - MARGIN, MARGIN:THUMB - MARGIN]
    w = w - w.mean(axis=(1, 2), keepdims=True)
    spec = xp.fft.rfft2(w, s=(THUMB, THUMB))     # 22 px zero-padded to 32: exact for lags <= 10
    ac = xp.fft.irfft2(spec.real ** 2 + spec.imag ** 2, s=(THUMB, THUMB))
    k = REG_LAGS
    ac = xp.roll(ac, (k, k), axis=(1, 2))[:, :2 * k + 1, :2 * k + 1]
    ac = (ac / xp.maximum(ac[:, k:k + 1, k:k + 1], 1e-6)).reshape(int(f.shape[0]), -1).astype(xp.float32)
    e2 = (w * w).sum(axis=(1, 2))
    pr = e2 * e2 / xp.maximum((w ** 4).sum(axis=(1, 2)), xp.float32(1e-12))
    sparsity = xp.minimum(xp.float32(1.0), 3 * pr / (w.shape[1] * w.shape[2]))[:, None].astype(xp.float32)
    return f, band_pass(thumbs, colour=False, sigmas=REG_COARSE_SIGMAS, half=True, xp=xp), ac, sparsity


def registered_z(r, ac_a, ac_b, sp_a, sp_b, xp=np):
    """(P,) float32 significance of registered correlations ``r`` of pairs whose images
    have autocorrelations ``ac_a``, ``ac_b`` and sparsities ``sp_a``, ``sp_b`` (from
    `reg_filters`): Fisher's atanh(r) * sqrt(n_eff - 3), n_eff = window pixels /
    sum(rho_a * rho_b) * sqrt(min sparsity).  Higher is more surely the same picture;
    ~N(0, 1) for unrelated images at one alignment."""
    w = THUMB - 2 * MARGIN
    n_eff = xp.float32(w * w) / xp.maximum((ac_a * ac_b).sum(axis=1), xp.float32(1.0))
    n_eff = n_eff * xp.sqrt(xp.minimum(sp_a, sp_b)[:, 0])
    return (xp.arctanh(xp.clip(r, -0.9999, 0.9999)) * xp.sqrt(xp.maximum(n_eff - 3, 1))).astype(xp.float32)


def registered_similarity(fa, ca, fb, cb, xp=np):
    """(P,) float32 registered similarity (above) of pairs of images given by the first
    two of their `reg_filters` (a's and b's, row k a pair), -1 where the coarse step
    already ruled the pair out (< REG_COARSE_MIN); (P,) float32 the zoom applied to b
    at the peak (1 = none); and (P,) int64 each the shift (dy, dx) of b's window at the
    peak (32 px units, 0 where ruled out)."""
    p = int(fa.shape[0])
    at_y, at_x = xp.zeros(p, dtype=xp.int64), xp.zeros(p, dtype=xp.int64)
    if p == 0:
        return xp.zeros(0, xp.float32), xp.ones(0, xp.float32), at_y, at_x
    r = 2 * COARSE_SHIFT + 1
    best = xp.full(p, -2.0, dtype=xp.float32)
    best_z = xp.zeros(p, dtype=xp.int64)
    best_s = xp.zeros(p, dtype=xp.int64)
    rows = xp.arange(p)
    for k, z in enumerate(REG_ZOOMS):                     # coarse: every zoom, 16 px
        flat = correlations(ca, _sandwich(cb, _zoom(THUMB // 2, z), xp), COARSE_SHIFT, COARSE_SHIFT,
                            xp).reshape(p, -1)
        arg = flat.argmax(axis=1)
        val = flat[rows, arg]
        better = val > best
        best = xp.where(better, val, best)
        best_z = xp.where(better, k, best_z)
        best_s = xp.where(better, arg, best_s)
    dy = 2 * (best_s // r - COARSE_SHIFT)
    dx = 2 * (best_s % r - COARSE_SHIFT)
    out = xp.full(p, -1.0, dtype=xp.float32)
    zoom_at = xp.ones(p, dtype=xp.float32)
    live = xp.nonzero(best >= REG_COARSE_MIN)[0]
    if int(live.shape[0]) == 0:
        return out, zoom_at, at_y, at_x
    av = _centre(fa[live], MARGIN, xp)
    fb, best_z, dy, dx = fb[live], best_z[live], dy[live], dx[live]
    for k in np.unique(_to_host(best_z)).tolist():        # fine: best zoom +- half a step, 32 px
        g = xp.nonzero(best_z == k)[0]
        at = live[g]
        for f in (1.0, 1 / REG_HALF_STEP, REG_HALF_STEP):
            z = REG_ZOOMS[k] * f
            sc, sy, sx = _peaks_at(av[g], _sandwich(fb[g], _zoom(THUMB, z), xp), dy[g], dx[g], 1, xp, shifts=True)
            better = sc > out[at]
            out[at] = xp.where(better, sc, out[at])
            zoom_at[at] = xp.where(better, xp.float32(z), zoom_at[at])
            at_y[at] = xp.where(better, sy, at_y[at])
            at_x[at] = xp.where(better, sx, at_x[at])
    return out, zoom_at, at_y, at_x


def colour_fit(ta, tb, zoom, dy, dx, xp=np):
    """(P,) float32: how well one global colour map explains b from a once aligned.

    ta, tb (P, 32, 32, 3) uint8 thumbnails of the pairs, aligned as the registered
    similarity found them (b zoomed by ``zoom``, its window shifted by (dy, dx)).  Both
    blurred (Gaussian, COLOUR_SIGMA px: what resampling and JPEG change goes), then the
    least-squares affine map from a's RGB to b's over the central window; the value is
    its R^2, 1 - residual / variance of b.  A re-processed copy of one shot (white
    balance, saturation, contrast, gamma) is one global map of its colours; a look-alike
    of the same pose (a bay horse for a chestnut one, an airliner in another livery)
    puts different colours at the same place, which no global map explains."""
    p = int(ta.shape[0])
    if p == 0:
        return xp.zeros(0, xp.float32)
    w = THUMB - 2 * MARGIN
    g = _gauss(THUMB, COLOUR_SIGMA)
    x = _sandwich(xp.moveaxis(ta.astype(xp.float32), -1, 1) / 255, g, xp)[:, :, MARGIN:MARGIN + w, MARGIN:MARGIN + w]
    x = xp.moveaxis(x.reshape(p, 3, w * w), 1, 2)                       # (P, n, 3)
    b = xp.moveaxis(tb.astype(xp.float32), -1, 1) / 255
    y = xp.empty_like(x)
    ramp = xp.arange(w)
    zoom_h = _to_host(zoom)
    for z in np.unique(zoom_h).tolist():
        k = xp.asarray(np.nonzero(zoom_h == z)[0])
        bz = _sandwich(_sandwich(b[k], _zoom(THUMB, z), xp), g, xp)      # (G, 3, 32, 32): zoomed, then blurred
        ry = (MARGIN + dy[k])[:, None] + ramp                           # (G, w) rows of b's window
        rx = (MARGIN + dx[k])[:, None] + ramp
        win = bz[xp.arange(int(k.shape[0]))[:, None, None], :, ry[:, :, None], rx[:, None, :]]   # (G, w, w, 3)
        y[k] = win.reshape(int(k.shape[0]), w * w, 3)
    x1 = xp.concatenate([x, xp.ones_like(x[:, :, :1])], axis=2)        # (P, n, 4)
    xtx = xp.matmul(xp.swapaxes(x1, 1, 2), x1) + xp.float32(1e-4) * xp.eye(4, dtype=xp.float32)
    coef = xp.linalg.solve(xtx, xp.matmul(xp.swapaxes(x1, 1, 2), y))  # (P, 4, 3)
    res = y - xp.matmul(x1, coef)
    var = ((y - y.mean(axis=1, keepdims=True)) ** 2).sum(axis=(1, 2))
    return (1 - (res ** 2).sum(axis=(1, 2)) / xp.maximum(var, xp.float32(1e-6))).astype(xp.float32)
