"""The prepared GPU check: everything gpupipe runs on a GPU that does not need
DALI or cuDF, timed, compared with the CPU, written to one JSON file.

    python benchmarks/gpu_prepare.py                      # here, on the CPU: makes .gpu/run
    python benchmarks/gpu_check.py --run .gpu/run --out gpu_check.json   # on the GPU machine

Made for the machine this project is lent (one NVIDIA GPU, torch, CuPy,
pandas, pyarrow, scipy, xxhash; no DALI, no cuDF, no Dask) and for a budget of
under 8 minutes.  Sections, each timed and recorded on its own (a failing
section records its traceback and the others still run):

1. equality: the hash kernels (pHash, 256-bit DCT hash, shift key, ring code,
   pixel hash) and the same-picture similarity on CuPy vs numpy, on the run's
   real thumbnails;
2. kernels: images/s of each kernel on the GPU and on this machine's CPU;
   photo: the photo route's registered similarity, z, colour fit and decisions
   on CuPy vs numpy (tinted thumbnails, re-processed copies and random pairs);
3. neighbours: `near_pairs` at 10M planted hashes, both dedup keys, direct
   pairs, recall of the planted pairs, GPU vs the CPU's time at 1M;
4. dedup: the dedup stage on the GPU from the CPU run's hash columns and
   thumbnails: the same groups as the CPU ledger?
5. models: both auxiliary models trained on CUDA with bf16 autocast on the
   thumbnails (the models' 32x32 input) with the ledger's labels: training
   images/s, held-out accuracy; scoring through `gpupipe.models.score.score`
   vs the bare forward pass (images/s, and their ratio).

What it cannot reach there: DALI (the decode and augmentation pipelines, the
``mixed`` decoder; training here feeds tensors without augmentation), cuDF
(the ledger stays in pandas; `Ledger`'s cuDF branch is tested only for the
pure parts) and dask-cuda.  ``--xp numpy`` runs every section on the CPU at
small sizes: a smoke test of this script where no GPU is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


class Check:
    def __init__(self, xp, out: Path, budget_s: float):
        self.xp, self.out, self.t0, self.budget = xp, out, time.perf_counter(), budget_s
        self.results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
                              "cpu_count": os.cpu_count(), "sections": {}}

    @property
    def gpu(self) -> bool:
        return self.xp is not np

    def sync(self) -> None:
        if self.gpu:
            self.xp.cuda.Device().synchronize()

    def timed(self, fn, repeat: int = 3):
        """Mean seconds of ``repeat`` calls after one warm-up, and the last output."""
        fn()
        self.sync()
        t = time.perf_counter()
        for _ in range(repeat):
            out = fn()
        self.sync()
        return (time.perf_counter() - t) / repeat, out

    def section(self, name: str, fn) -> None:
        left = self.budget - (time.perf_counter() - self.t0)
        if left < 10:
            self.results["sections"][name] = {"skipped": f"budget spent ({left:.0f} s left)"}
        else:
            t = time.perf_counter()
            try:
                r = fn()
                r["seconds"] = round(time.perf_counter() - t, 2)
                self.results["sections"][name] = r
            except Exception:
                self.results["sections"][name] = {"error": traceback.format_exc()[-3000:],
                                                  "seconds": round(time.perf_counter() - t, 2)}
        print(f"== {name}: {json.dumps(self.results['sections'][name], default=str)[:1500]}", flush=True)
        self.write()

    def write(self) -> None:
        self.results["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=2, default=str))


def to_host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def load_run(run: Path):
    table = pq.read_table(run / "ledger.parquet")
    if (run / "thumbs.npz").exists():
        thumbs = np.load(run / "thumbs.npz")["thumbs"]
    else:
        thumbs = np.load(run / "thumbs.npy")
    return table, thumbs


def equality(c: Check, rgb: np.ndarray, small: bool) -> dict:
    from gpupipe.hashing.phash import FINE_SIZE, dct_hash, phash
    from gpupipe.hashing.pixels import pixel_hash, to_hex
    from gpupipe.hashing.shiftkey import ring_code, shift_key
    from gpupipe.hashing.verify import PairCheck, to_gray

    xp = c.xp
    gray = to_host(to_gray(rgb, np))
    g = xp.asarray(gray)
    r: dict = {"rows": len(gray)}
    r["phash_equal"] = float(np.mean(phash(gray) == to_host(phash(g, xp))))
    r["fine_hash_rows_equal"] = float(np.mean((dct_hash(gray, size=FINE_SIZE) ==
                                               to_host(dct_hash(g, size=FINE_SIZE, xp=xp))).all(1)))
    r["shift_key_equal"] = float(np.mean(shift_key(gray) == to_host(shift_key(g, xp))))
    r["ring_code_rows_equal"] = float(np.mean((ring_code(gray) == to_host(ring_code(g, xp=xp))).all(1)))
    sub = rgb[:4096]
    r["pixel_hash_equal"] = float(np.mean(np.array(to_hex(pixel_hash(sub))) ==
                                          np.array(to_hex(to_host(pixel_hash(xp.asarray(sub), xp))))))
    rng = np.random.default_rng(0)
    m = 2000 if small else 20000
    pi, pj = rng.integers(0, len(rgb), m), rng.integers(0, len(rgb), m)
    pj[: m // 4] = pi[: m // 4]                       # some identical pairs (similarity 1)
    s_c = PairCheck(rgb).similarity(pi, pj, gate=False, full=True)
    s_g = to_host(PairCheck(xp.asarray(rgb), xp=xp).similarity(xp.asarray(pi), xp.asarray(pj), gate=False, full=True))
    r["similarity_pairs"] = m
    r["similarity_max_abs_diff"] = float(np.abs(s_c - s_g).max())
    r["similarity_decisions_differ_at_0.99"] = int(((s_c >= 0.99) != (s_g >= 0.99)).sum())
    return r


def photo_route(c: Check, rgb: np.ndarray, small: bool) -> dict:
    """The photo route (`--verify photo`: registered similarity, its z, the colour
    fit, the decision) on CuPy vs numpy.  The run's thumbnails tinted per image
    (colour images) and, as the second of each pair, the same tinted again with a
    gamma and shifted 1 px (one shot re-processed); plus random pairs.  And pairs/s."""
    from gpupipe.hashing.verify import PairCheck

    xp = c.xp
    rng = np.random.default_rng(1)
    n = 1000 if small else 10000
    base = rgb[:n].astype(np.float32)
    if base.ndim == 3:
        base = np.repeat(base[..., None], 3, axis=3)
    n = len(base)
    tinted = np.clip(base * rng.uniform(0.6, 1.4, size=(n, 1, 1, 3)), 0, 255)
    again = 255 * (np.roll(tinted, 1, axis=2) / 255) ** rng.uniform(0.8, 1.25, size=(n, 1, 1, 1))
    thumbs = np.concatenate([tinted, np.clip(again, 0, 255)]).astype(np.uint8)
    m = 2000 if small else 20000
    i = np.concatenate([np.arange(n), rng.integers(0, 2 * n, m)])
    j = np.concatenate([np.arange(n) + n, rng.integers(0, 2 * n, m)])
    cpu = PairCheck(thumbs, registered=True)
    gpu = PairCheck(xp.asarray(thumbs), xp=xp, registered=True)
    rc, dc = cpu.registered_similarity(i, j), cpu(i, j)
    seconds, (rg, dg) = c.timed(lambda: (gpu.registered_similarity(xp.asarray(i), xp.asarray(j)),
                                         gpu(xp.asarray(i), xp.asarray(j))), repeat=2)
    live = rc.r >= 0.85
    return {"pairs": len(i), "shot_pairs_accepted_cpu": float(dc[:n].mean()),
            "r_max_abs_diff": float(np.abs(rc.r - to_host(rg.r)).max()),
            "z_max_abs_diff": float(np.abs(rc.z - to_host(rg.z)).max()),
            "colour_fit_max_abs_diff_where_r_ge_0.85": float(np.abs(rc.colour_fit - to_host(rg.colour_fit))[live].max())
            if live.any() else None,
            "decisions_differ": int((dc != to_host(dg)).sum()),
            "pairs_per_s_registered_and_decision": round(len(i) / seconds, 1)}


def kernels(c: Check, rgb: np.ndarray, small: bool) -> dict:
    from gpupipe.hashing.phash import FINE_SIZE, dct_hash, phash
    from gpupipe.hashing.pixels import pixel_hash
    from gpupipe.hashing.shiftkey import shift_key
    from gpupipe.hashing.verify import PairCheck, to_gray

    xp = c.xp
    gray = to_host(to_gray(rgb, np))
    r: dict = {}
    n_gpu = 4096 if small else 262144
    n_cpu = 2048 if small else 32768
    for where, mod, n in (("gpu", xp, n_gpu), ("cpu", np, n_cpu)):
        if where == "gpu" and not c.gpu:
            continue
        sync = c.sync if where == "gpu" else (lambda: None)
        big = mod.asarray(np.resize(gray, (n, 32, 32)))

        def t(fn, repeat=3):
            fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn()
            sync()
            return round(n * repeat / (time.perf_counter() - t0))

        r[f"{where}_phash_images_per_s"] = t(lambda: phash(big, mod))
        r[f"{where}_shift_key_images_per_s"] = t(lambda: shift_key(big, mod))
        r[f"{where}_fine_hash_images_per_s"] = t(lambda: dct_hash(big, size=FINE_SIZE, xp=mod))
        for b, hw in ((n // 4, 28), (max(64, n // 64), 224)):
            imgs = mod.asarray(np.random.default_rng(0).integers(0, 255, size=(b, hw, hw, 3), dtype=np.uint8))
            sync()
            t0 = time.perf_counter()
            for _ in range(3):
                pixel_hash(imgs, mod)
            sync()
            s = (time.perf_counter() - t0) / 3
            r[f"{where}_pixel_hash_{hw}px_images_per_s"] = round(b / s)
            r[f"{where}_pixel_hash_{hw}px_GB_per_s"] = round(imgs.nbytes / s / 1e9, 2)
            del imgs
        pairs = (n // 4) if where == "gpu" else n // 16
        rng = np.random.default_rng(1)
        i, j = mod.asarray(rng.integers(0, len(rgb), pairs)), mod.asarray(rng.integers(0, len(rgb), pairs))
        # cold: band-passes computed on first use; warm: all cached; big chunks: fewer launches
        for label, chunk, warm in (("cold", 16384, False), ("warm", 16384, True), ("warm_chunk65536", 65536, True),
                                   ("warm_chunk131072", 131072, True), ("cold_default", None, False)):
            chk = PairCheck(mod.asarray(rgb), xp=mod, chunk=chunk)
            chk.similarity(i[:256], j[:256], gate=False)
            if warm:
                chk.similarity(i, j, gate=False)
            sync()
            t0 = time.perf_counter()
            chk.similarity(i, j, gate=False)
            sync()
            r[f"{where}_pair_check_no_gate_{label}_pairs_per_s"] = round(pairs / (time.perf_counter() - t0))
            if where == "cpu":
                break
    return r


def neighbours(c: Check, small: bool) -> dict:
    from bench_neighbors import BUCKETS, planted_hashes

    from gpupipe.hashing.neighbors import near_pairs

    xp = c.xp
    r: dict = {}
    sizes = [("cpu", np, 20_000 if small else 1_000_000)]
    if c.gpu:
        sizes.append(("gpu", xp, 10_000_000))
    elif small:
        sizes.append(("numpy-as-gpu", np, 50_000))
    for where, mod, n in sizes:
        keys = [planted_hashes(n, k) for k in range(2)]
        dev = [mod.asarray(h) for h, *_ in keys]
        if mod is not np:
            near_pairs(dev[0][:100_000], max_distance=8, direct=True)       # compile kernels
        sync = c.sync if mod is not np else (lambda: None)
        sync()
        t0 = time.perf_counter()
        got_all, dist_all, pairs = [], [], 0
        for k, (h, base, partner, dist) in enumerate(keys):
            i, j, _ = near_pairs(dev[k], max_distance=8, seed=k, direct=True)
            sync()
            i, j = to_host(i), to_host(j)
            pairs += int(i.size)
            got_all.append(np.isin(np.minimum(base, partner) * n + np.maximum(base, partner), i * n + j))
            dist_all.append(dist)
        wall = time.perf_counter() - t0
        got, dist = np.concatenate(got_all), np.concatenate(dist_all)
        within = dist <= 8
        row = {"n": n, "wall_s": round(wall, 2), "pairs": pairs, "recall": round(float(got[within].mean()), 4)}
        for lo, hi in BUCKETS:
            sel = within & (dist >= lo) & (dist <= hi)
            if sel.any():
                row[f"recall_{lo}-{hi}"] = round(float(got[sel].mean()), 4)
        r[where] = row
        del dev, keys
    return r


def dedup_gpu(c: Check, table, rgb: np.ndarray) -> dict:
    from gpupipe import schema
    from gpupipe.device import cpu_device, resolve_device
    from gpupipe.stages.dedup import DedupConfig, dedup
    from gpupipe.table import Ledger

    dev = resolve_device("gpu") if c.gpu else cpu_device()
    base = table.drop_columns(list(schema.names("dedup")))
    ledger = Ledger(dev)
    frame = ledger.from_arrow(base)
    times = []
    for _ in range(2):                       # the first call compiles CuPy kernels
        t = time.perf_counter()
        out, stats = dedup(frame, ledger, DedupConfig(), thumbs=rgb)
        c.sync()
        times.append(time.perf_counter() - t)
    cols = [n for n in schema.names("dedup") if n != schema.DEDUP_SIMILARITY]
    got = ledger.to_arrow(out).select(cols)
    want = table.select(cols)
    differ = int(sum(a != b for a, b in zip(got.column(schema.DEDUP_GROUP).to_pylist(),
                                            want.column(schema.DEDUP_GROUP).to_pylist())))
    sim_g = np.array(got.column(schema.DEDUP_SIMILARITY).to_pylist() if schema.DEDUP_SIMILARITY in got.column_names
                     else ledger.to_arrow(out).column(schema.DEDUP_SIMILARITY).to_pylist(), dtype=float)
    sim_c = np.array(table.column(schema.DEDUP_SIMILARITY).to_pylist(), dtype=float)
    both = ~np.isnan(sim_g) & ~np.isnan(sim_c)
    return {"rows": len(rgb), "device": dev.kind, "df": dev.df.__name__, "device_note": dev.note,
            "first_call_s": round(times[0], 2), "warm_s": round(times[1], 2),
            "rows_per_s_warm": round(len(rgb) / times[1]),
            "candidates": stats.candidates, "checked": stats.checked, "gated": stats.gated,
            "verified": stats.verified, "equal_to_cpu_ledger": bool(got.cast(want.schema).equals(want)),
            "rows_in_another_group": differ,
            "similarity_max_abs_diff": float(np.abs(sim_g[both] - sim_c[both]).max()) if both.any() else None}


def models(c: Check, table, rgb: np.ndarray, small: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from gpupipe import schema
    from gpupipe.models import nets
    from gpupipe.models.score import score

    dev = "cuda:0" if c.gpu else "cpu"
    labels_s = table.column(schema.LABEL).to_pylist()
    ok = ~np.array(table.column(schema.IS_INVALID).to_pylist(), dtype=bool)
    classes = sorted({lab for lab, o in zip(labels_s, ok) if o})
    y_all = np.array([classes.index(lab) if o else -1 for lab, o in zip(labels_s, ok)])
    rows = np.nonzero(ok)[0]
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    if small:
        rows = rows[:3000]
    n_val = len(rows) // 5
    tr, va = rows[n_val:], rows[:n_val]
    x_all = torch.as_tensor(rgb).to(dev).permute(0, 3, 1, 2).float().div_(255)
    y_t = torch.as_tensor(y_all, device=dev)
    r: dict = {"device": torch.cuda.get_device_name(0) if c.gpu else "cpu", "torch": torch.__version__,
               "train_rows": len(tr), "val_rows": len(va), "classes": len(classes)}
    epochs = 2 if small else 5
    for name in ("small-cnn", "resnet50-layer1"):
        spec = nets.resolve_model(name)
        torch.manual_seed(0)
        model = nets.build(spec, len(classes), 3, seed=0).to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr * (10 if name == "resnet50-layer1" else 1))
        bs = 256
        tr_t = torch.as_tensor(tr, device=dev)
        model.train()
        seen, t_train = 0, 0.0
        for ep in range(epochs):
            perm = tr_t[torch.randperm(len(tr_t), device=dev)]
            c.sync()
            torch.cuda.synchronize() if c.gpu else None
            t0 = time.perf_counter()
            for b in range(0, len(perm) - bs + 1, bs):
                idx = perm[b:b + bs]
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=c.gpu):
                    loss = F.cross_entropy(model(x_all[idx]), y_t[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(idx) if ep > 0 else 0
            torch.cuda.synchronize() if c.gpu else None
            t_train += (time.perf_counter() - t0) if ep > 0 else 0.0
        m: dict = {"epochs": epochs, "batch_size": bs,
                   "train_images_per_s": round(seen / t_train) if t_train > 0 else None}
        # scoring: gpupipe's score() over device-resident batches vs the bare bf16 forward
        va_t = torch.as_tensor(va, device=dev)
        sbs = 4096 if c.gpu else 1024          # rank's default score batch on each
        reps = 1 if small else 5
        x_rep = x_all[va_t.repeat(reps)]
        rows_rep = np.tile(va, reps)

        def batches(x=x_rep, rows=rows_rep):
            for b in range(0, len(x), sbs):
                yield x[b:b + sbs], rows[b:b + sbs]

        s = score(model, batches(), np.where(y_all < 0, 0, y_all), torch_device=dev)   # warm-up
        torch.cuda.synchronize() if c.gpu else None
        t0 = time.perf_counter()
        s = score(model, batches(), np.where(y_all < 0, 0, y_all), torch_device=dev)
        torch.cuda.synchronize() if c.gpu else None
        t_score = time.perf_counter() - t0
        model.eval()
        with torch.inference_mode():
            for _ in range(2):
                torch.cuda.synchronize() if c.gpu else None
                t0 = time.perf_counter()
                for b in range(0, len(x_rep), sbs):
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=c.gpu):
                        model(x_rep[b:b + sbs])
                torch.cuda.synchronize() if c.gpu else None
                t_fwd = time.perf_counter() - t0
        torch.cuda.synchronize() if c.gpu else None
        t0 = time.perf_counter()
        score(model, batches(), np.where(y_all < 0, 0, y_all), torch_device=dev, embed=True)
        torch.cuda.synchronize() if c.gpu else None
        m["score_with_embedding_images_per_s"] = round(len(x_rep) / (time.perf_counter() - t0))
        m["val_accuracy"] = round(float((s.pred[: len(va)] == y_all[va]).mean()), 4)
        m["score_images_per_s"] = round(len(x_rep) / t_score)
        m["bare_forward_images_per_s"] = round(len(x_rep) / t_fwd)
        m["score_vs_forward"] = round(t_fwd / t_score, 3)
        r[name] = m
        del model, opt, x_rep
    return r


def outlier_knn(c: Check, small: bool) -> dict:
    """The outlier score's search (models.outlier.knn_distances: the k-th
    neighbour within each of 10 classes) and the neighbours' votes for the
    flags (models.outlier.knn_vote): N random unit vectors (240-d, the small
    CNN's four blocks) against the capped reference, on the device."""
    import torch

    from gpupipe.models.outlier import K, REF_MAX, VOTE_K, knn_distances, knn_vote

    dev = "cuda:0" if c.gpu else "cpu"
    dim = 240
    out: dict = {"ref_rows": REF_MAX, "k": K, "vote_k": VOTE_K, "dim": dim, "classes": 10}
    labels = np.arange(REF_MAX) % 10
    for n in ((20_000,) if small else (100_000, 1_000_000)):
        g = torch.Generator(device=dev).manual_seed(0)
        q = torch.nn.functional.normalize(torch.randn(n, dim, device=dev, generator=g), dim=1)
        r = torch.nn.functional.normalize(torch.randn(REF_MAX, dim, device=dev, generator=g), dim=1)
        knn_distances(q[:4096], r, labels, device=dev)      # warm-up
        torch.cuda.synchronize() if c.gpu else None
        t0 = time.perf_counter()
        knn_distances(q, r, labels, device=dev)
        torch.cuda.synchronize() if c.gpu else None
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        knn_vote(q, r, labels, 10, device=dev)
        torch.cuda.synchronize() if c.gpu else None
        dv = time.perf_counter() - t0
        out[f"n{n}"] = {"seconds": round(dt, 3), "queries_per_s": round(n / dt),
                        "vote_seconds": round(dv, 3), "vote_queries_per_s": round(n / dv)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=".gpu/run", help="from gpu_prepare.py: ledger.parquet + thumbs.npz")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--xp", choices=("cupy", "numpy"), default="cupy",
                    help="numpy: a CPU smoke test of this script at small sizes")
    ap.add_argument("--budget", type=float, default=420, help="seconds; later sections are skipped past it")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = ap.parse_args()
    small = args.xp == "numpy"
    if small:
        xp = np
    else:
        import cupy as xp
    c = Check(xp, Path(args.out), args.budget)
    if c.gpu:
        props = xp.cuda.runtime.getDeviceProperties(0)
        c.results["gpu"] = {"name": props["name"].decode(), "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                            "cupy": xp.__version__}
    table, rgb = load_run(Path(args.run))
    print(f"run {args.run}: {table.num_rows} rows; thumbs {rgb.shape}", flush=True)
    sections = {
        "equality": lambda: equality(c, rgb, small),
        "kernels": lambda: kernels(c, rgb, small),
        "photo": lambda: photo_route(c, rgb, small),
        "models": lambda: models(c, table, rgb, small),
        "dedup": lambda: dedup_gpu(c, table, rgb),
        "neighbours": lambda: neighbours(c, small),
        "outlier": lambda: outlier_knn(c, small),
    }
    for name, fn in sections.items():
        if args.only is None or name in args.only:
            c.section(name, fn)
    c.write()
    errors = [k for k, v in c.results["sections"].items() if "error" in v]
    print(f"done in {c.results['elapsed_s']} s; errors in: {errors or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
