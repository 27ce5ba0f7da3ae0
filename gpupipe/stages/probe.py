"""Per-run recall: how much of each kind of near duplicate would this run miss, on these images?

Before grouping, the dedup run takes a small seeded sample of its own valid
images, makes an edited copy of each in memory for every kind in
`gpupipe.transforms.PROBE_KINDS` (JPEG, brightness, contrast, resize,
upscale, shifts of 4% and 7% of the side, a 5% crop, blur, noise), and puts
the copies through the same path as the real files: DALI decode, thumbnails,
pHash and shift key (`gpupipe.stages.hashing.image_keys`), the candidate
search against the real index, and the same-picture check
(`gpupipe.stages.dedup`).  A copy is found when a verified pair links it to
its source's group; a verified pair with any other image is a false match.

Nothing is written to the source or added to the ledger: the copies exist
only in memory, and they search the index as queries (they take no place in
the real images' search).  The numbers go to ``summary.json``, the printed
summary and the report.  Sources are read again (the sampled files only) and
decoded with the run's own decoder, so EXIF orientation and colour handling
are those of the real rows.

Reads: sample_id, path, is_invalid_issue and the hash stage's thumbnails.
Adds nothing: returns a `gpupipe.stages.dedup.Probes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpupipe import schema
from gpupipe.device import Device
from gpupipe.io.sources import read_many
from gpupipe.stages.dedup import Probes
from gpupipe.transforms import PROBE_KINDS, near_copy
from gpupipe.xputil import splitmix64

DEFAULT_SAMPLE = 100


@dataclass(frozen=True)
class ProbeConfig:
    sample: int = DEFAULT_SAMPLE      # source images; 0 turns the measurement off
    kinds: tuple[str, ...] = PROBE_KINDS
    seed: int = 0


def sample_rows(sample_ids: np.ndarray, valid: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The k valid rows with the smallest seeded hash of their sample_id: a
    random sample that depends on neither row order nor partitioning."""
    rows = np.flatnonzero(valid)
    if k <= 0 or not len(rows):
        return rows[:0]
    key = splitmix64(sample_ids[rows].astype(np.int64), seed=seed ^ 0x5EED)
    return np.sort(rows[np.argsort(key, kind="stable")[:k]])


def make_probes(table, device: Device, config: ProbeConfig, *, batch_size: int = 256) -> Probes | None:
    """Edited copies of a sample of ``table``'s valid rows (an Arrow table with
    sample_id, path, is_invalid_issue), decoded and hashed like real files.
    Returns None when the sample is empty."""
    from gpupipe.dali.decode import Decoder
    from gpupipe.stages.hashing import image_keys

    ids = table.column(schema.SAMPLE_ID).to_numpy()
    valid = ~np.asarray(table.column(schema.IS_INVALID).to_numpy(zero_copy_only=False), dtype=bool)
    rows = sample_rows(ids, valid, config.sample, config.seed)
    if not len(rows):
        return None
    paths = table.column(schema.PATH).to_pylist()
    locs = table.column(schema.LOCATOR).to_pylist() if schema.LOCATOR in table.column_names else [None] * len(paths)
    decoder = Decoder(device, batch_size=batch_size).setup()
    sources = _decode_files([paths[r] for r in rows.tolist()], [locs[r] for r in rows.tolist()], decoder)
    rng = np.random.default_rng(config.seed)
    xp = device.xp
    src_row, kinds = [], []
    ph, sk, thumbs, keep = [], [], [], []
    queued: dict[bool, list] = {True: [], False: []}    # lossless? -> [(copy index, pixels or bytes)]

    def flush(lossless: bool) -> None:     # decode (or only resize) and hash one batch of copies
        batch = queued[lossless]
        at = np.asarray([c for c, _ in batch], np.int64)
        dec = (decoder.thumbnails if lossless else decoder.decode)([x for _, x in batch])
        p, k = image_keys(dec.grays, xp)
        ph.append(device.to_host(p))
        sk.append(device.to_host(k))
        thumbs.append(device.to_host(dec.thumbs))
        keep.append(at[dec.ok])
        batch.clear()

    for r, img in zip(rows.tolist(), sources):
        if img is None:
            continue
        pixels = img[..., 0] if _is_gray(img) else img
        for kind in config.kinds:
            # Lossless copies are not encoded: their pixels are what decoding their PNG
            # would give, and they take the same resize (`Decoder.thumbnails`).  Encoding
            # them took 13 of the probe's 15 s on 1,200 copies of 256 px photos.
            encoded, out = near_copy(pixels, kind, rng, png_level=None)
            lossless = encoded is None
            x = (np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out) if lossless \
                else np.frombuffer(encoded, np.uint8)
            queued[lossless].append((len(src_row), x))
            src_row.append(r)
            kinds.append(kind)
            if len(queued[lossless]) == batch_size:
                flush(lossless)
    for lossless in (True, False):
        if queued[lossless]:
            flush(lossless)
    keep_idx = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    if not len(keep_idx):
        return None
    order = np.argsort(keep_idx, kind="stable")            # the copies in the order they were made
    keep_idx = keep_idx[order]
    return Probes(
        phash=np.concatenate(ph).astype(np.uint64)[order], shift=np.concatenate(sk).astype(np.uint64)[order],
        thumbs=np.concatenate(thumbs)[order], source_row=np.asarray(src_row, np.int64)[keep_idx],
        kind=np.asarray(kinds, dtype=object)[keep_idx],
    )


def _is_gray(img: np.ndarray) -> bool:
    return bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())


def _decode_files(paths: list[str], locators: list, decoder) -> list[np.ndarray | None]:
    """Full-size RGB pixels of each sample (None where it cannot be read or decoded)."""
    data: list[np.ndarray] = []
    index: list[int] = []
    out: list[np.ndarray | None] = [None] * len(paths)
    for k, b in enumerate(read_many(paths, locators)):
        if not isinstance(b, OSError):
            data.append(np.frombuffer(b, np.uint8))
            index.append(k)
    for s in range(0, len(data), decoder.batch_size):
        dec = decoder.decode(data[s:s + decoder.batch_size])
        for pos, images in dec.rgb_groups:
            host = decoder.device.to_host(images)
            for p, img in zip(pos.tolist(), host):
                out[index[s + p]] = img
    return out
