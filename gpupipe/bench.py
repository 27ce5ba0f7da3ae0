"""``gpupipe bench SRC``: how fast each stage runs on this data and this
hardware, against the decode ceiling.

On a seeded sample of SRC (``limit`` rows, or all of them) it times, in the
order the pipeline runs them:

* the **decode ceiling**: every valid file read and decoded once by DALI with
  the decoder and device the hash stage uses, pipelined, nothing done with the
  pixels (`gpupipe.dali.decode.decode_only`), over the same partitions and
  executor as the hash stage: the fastest any tool that must decode every
  image can go here;
* the **dedup stage**, through the same `gpupipe.runner.run_dedup` that
  ``gpupipe dedup`` runs (into a temporary run directory, removed after), and
  its steps as that run timed them: the hash stage (read, sniff, decode,
  hashes, thumbnails), the recall probe, the candidate search and the
  same-picture check (pairs/s);
* **scoring**: `rank`'s scoring path as rank runs it (each image decoded and
  resized once, `gpupipe.dali.decoded`, timed as its own row; then the forward
  pass and per-sample scores over those pixels) and from the files (decode +
  resize every pass, ``--decode-cache off``), against the bare forward pass of
  the same model over the same inputs already in memory, and training images/s
  for one augmented epoch.

Every step's rate is also given as a share of the decode ceiling: the rate at
which the sample's images pass that step, over the ceiling's.  Peak memory is
the most seen during the step (this process and its children, sampled every
50 ms; on a GPU, the device's memory in use).  With ``repeat`` > 1 the dedup
runs and the decode ceiling alternate (a VM's speed drifts) and each row is
the median round.  SRC is only read: the files are read once before timing,
so every step finds them in the page cache.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np

from gpupipe import schema
from gpupipe.device import Device, DeviceRequest, resolve_device
from gpupipe.hashing.verify import VerifyMode

FORMAT = "gpupipe-bench/1"
HELD = 32_768            # most images held in memory for the bare forward pass


@dataclass(frozen=True)
class BenchOptions:
    device: DeviceRequest = "auto"
    workers: int | None = None
    scheduler: str | None = None
    limit: int | None = None           # rows of SRC in the seeded sample; None: all
    seed: int = 0
    repeat: int = 1                    # alternating rounds of dedup and the decode ceiling
    batch_size: int = 512              # DALI batch of the hash stage and the ceiling
    recall_sample: int = 100           # as `gpupipe dedup --recall-sample`; 0: no probe
    verify: VerifyMode = "pixels"
    image_column: str | None = None
    label_column: str | None = None
    rank: bool = True                  # time scoring and training too
    model: str = "auto"                # as `rank --model` (auto: by the images' channels)
    image_size: int = 32
    train_limit: int = 8192            # most images in the training epoch
    scratch: str | None = None         # where the temporary run directory goes (None: the system's temp)


class _Memory:
    """Samples host memory (resident set of this process and its children:
    Dask workers) and, on a GPU, device memory in use, every ``every`` s in a
    thread; `peak` gives the most seen in a window of `time.perf_counter`."""

    def __init__(self, device: Device, every: float = 0.05):
        import psutil

        self._proc, self._device, self._every = psutil.Process(), device, every
        self._samples: list[tuple[float, int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpupipe-bench-memory", daemon=True)

    def _rss(self) -> int:
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a worker that just exited
                pass
        return total

    def _sample(self) -> tuple[float, int, int | None]:
        return time.perf_counter(), self._rss(), self._device.memory_in_use()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append(self._sample())
            self._stop.wait(self._every)

    def __enter__(self) -> "_Memory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, t0: float, t1: float) -> tuple[int, int | None]:
        samples = list(self._samples)
        seen = [s for s in samples if t0 <= s[0] <= t1]
        if not seen:
            # a step shorter than the sampling interval: the samples just before and just
            # after it (one taken now if the sampler has not run since: a busy machine)
            before = [s for s in samples if s[0] < t0][-1:]
            after = [s for s in samples if s[0] > t1][:1] or [self._sample()]
            seen = before + after
        dev = [s[2] for s in seen if s[2] is not None]
        return max(s[1] for s in seen), (max(dev) if dev else None)


class _Rows:
    """The table's rows as they are measured: per stage, each round's seconds and peaks."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def add(self, key: str, stage: str, unit: str, items: int, seconds: float, peak, *, mapped: bool = False,
            note: str = "") -> None:
        r = self.rows.setdefault(key, {"stage": stage, "unit": unit, "items": items, "rounds": [],
                                       "peak_host_bytes": None, "peak_device_bytes": None,
                                       "mapped": mapped, "note": note})
        r["rounds"].append(round(seconds, 4))
        for k, v in zip(("peak_host_bytes", "peak_device_bytes"), peak):
            if v is not None:
                r[k] = max(v, r[k] or 0)


def machine(device: Device) -> dict:
    """What the numbers were measured on: CPU, cores, memory, GPU, library versions."""
    import psutil
    import torch

    from gpupipe import summary

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {**summary.versions(), "torch": torch.__version__, "numpy": np.__version__}
    if device.is_gpu:
        versions["cupy"] = device.xp.__version__
        versions["dataframe"] = f"{device.df.__name__} {device.df.__version__}"
    return {
        "cpu": cpu, "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": device.name() if device.is_gpu else None, "platform": platform.platform(),
        "versions": versions,
    }


def _sample(ing, limit: int | None, seed: int):
    n = ing.table.num_rows
    if limit is None or limit >= n:
        return ing
    take = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    return replace(ing, table=ing.table.take(take))


def _refs(table) -> list:
    paths = table.column(schema.PATH).to_pylist()
    if schema.LOCATOR not in table.column_names:
        return paths
    locs = table.column(schema.LOCATOR).to_pylist()
    return [p if loc is None else (p, loc) for p, loc in zip(paths, locs)]


def _warm(table, threads: int = 8) -> float:
    """Read every row's bytes once (the page cache then holds SRC for every timed step); -> seconds."""
    from gpupipe.stages.hashing import _submit_reads

    t = time.perf_counter()
    paths = table.column(schema.PATH).to_pylist()
    locators = (table.column(schema.LOCATOR).to_pylist() if schema.LOCATOR in table.column_names
                else [None] * len(paths))
    with ThreadPoolExecutor(threads) as pool:
        for f in _submit_reads(pool, paths, locators, max(threads, len(paths) // 256)):
            f.result()
    return time.perf_counter() - t


def ceiling_partition(refs: list, device: str, batch_size: int, threads: int | None) -> int:
    """One partition of the decode ceiling, where the executor runs it."""
    from gpupipe.dali.decode import decode_only

    return decode_only(resolve_device(device), refs, batch_size=batch_size, num_threads=threads)


def bench(src, options: BenchOptions = BenchOptions(), *, log=lambda m: None) -> dict:
    """Time every stage on a sample of ``src``; -> the result (`FORMAT`), as
    `format_table` prints it and ``--json`` writes it."""
    import pyarrow.parquet as pq

    from gpupipe.runner import LEDGER, DedupOptions, partition_rows, run_dedup
    from gpupipe.scale.executor import make_executor, threads_per_worker
    from gpupipe.stages.ingest import ingest

    if options.repeat < 1:
        raise ValueError("repeat must be at least 1")
    if options.limit is not None and options.limit < 1:
        raise ValueError("limit must be at least 1")
    device = resolve_device(options.device)
    t = time.perf_counter()
    full = ingest(src, image_column=options.image_column, label_column=options.label_column)
    t_ingest = time.perf_counter() - t
    ing = _sample(full, options.limit, options.seed)
    sampled = ing is not full
    n = ing.table.num_rows
    if n == 0:
        raise ValueError(f"no images in {src}")
    refs = _refs(ing.table)
    log(f"gpupipe bench: {n:,} of {full.table.num_rows:,} images ({ing.layout}) on {device.kind}; "
        f"reading them once first")
    t_warm = _warm(ing.table)
    rows = _Rows()
    dedup_options = DedupOptions(device=device.kind, verify=options.verify, recall_sample=options.recall_sample,
                                 batch_size=options.batch_size, seed=options.seed,
                                 image_column=options.image_column, label_column=options.label_column)
    scratch = tempfile.mkdtemp(prefix="gpupipe-bench-", dir=options.scratch)
    try:
        with make_executor(workers=options.workers, scheduler=options.scheduler, gpu=device.is_gpu) as ex, \
                _Memory(device) as mem:
            threads = None if ex.name == "in-process" else threads_per_worker(ex.n_workers)
            per_part = partition_rows(n)
            valid_refs = None
            for r in range(options.repeat):
                run_dir = os.path.join(scratch, f"run{r}")
                t0 = time.perf_counter()
                # all of SRC: run_dedup lists it itself, as `gpupipe dedup` does (timed in the whole row)
                s = run_dedup(src, run_dir, dedup_options, ingested=ing if sampled else None, executor=ex)
                t1 = time.perf_counter()
                if valid_refs is None:      # the ceiling decodes the files the hash stage found valid
                    invalid = pq.read_table(os.path.join(run_dir, LEDGER), columns=[schema.IS_INVALID])
                    valid = np.flatnonzero(~invalid.column(0).to_numpy(zero_copy_only=False))
                    if not len(valid):
                        raise ValueError(f"none of the {n:,} sampled files of {src} decodes")
                    valid_refs = [refs[i] for i in valid]
                    parts = [valid_refs[i:i + per_part] for i in range(0, len(valid_refs), per_part)]
                    ex.map(ceiling_partition, [valid_refs[:options.batch_size]], device.kind,
                           options.batch_size, threads)              # warm-up: DALI's first pipeline
                shutil.rmtree(run_dir, ignore_errors=True)
                _dedup_rows(rows, s, t0, t1, mem, n)
                log(f"  round {r + 1}: dedup {t1 - t0:.2f} s ({n / (t1 - t0):,.0f} images/s)")
                t0 = time.perf_counter()
                ex.map(ceiling_partition, parts, device.kind, options.batch_size, threads)
                t1 = time.perf_counter()
                rows.add("ceiling", "decode ceiling (DALI decode-only, pipelined)", "images", len(valid_refs),
                         t1 - t0, mem.peak(t0, t1), mapped=True)
                log(f"  round {r + 1}: decode ceiling {t1 - t0:.2f} s ({len(valid_refs) / (t1 - t0):,.0f} images/s)")
            executor = ex.name
            n_workers = ex.n_workers
            if options.rank:
                labels = (ing.table.column(schema.LABEL).to_pylist() if schema.LABEL in ing.table.column_names
                          else [None] * n)
                _rank_rows(rows, device, valid_refs, [labels[i] for i in valid], options, mem, log, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _result(src, options, device, full, ing, rows, executor, n_workers, t_ingest, t_warm)


def _dedup_rows(rows: _Rows, s, t0: float, t1: float, mem: _Memory, n: int) -> None:
    """The rows of one dedup run: the whole run and its steps, each in the
    window its seconds place it in (the steps run one after another)."""
    sec = s.seconds
    d = s.counts["dedup_stage"]
    a = t0 + sec["ingest"]
    rows.add("hash", "hash stage (read, sniff, decode, hashes, thumbnails)", "images", n, sec["hash"],
             mem.peak(a, a + sec["hash"]), mapped=True)
    a += sec["hash"]
    if sec.get("probe", 0) > 0 or (s.recall or {}):
        copies = (s.recall or {}).get("copies", 0)
        rows.add("probe", "recall probe (edited copies made, decoded, hashed)", "copies", copies, sec["probe"],
                 mem.peak(a, a + sec["probe"]))
    a += sec.get("probe", 0.0)
    search, verify = d["seconds"].get("search", 0.0), d["seconds"].get("verify", 0.0)
    rows.add("search", "candidate search (pHash + shift key)", "pictures", d["nodes"], search,
             mem.peak(a, a + search))
    rows.add("check", "same-picture check", "pairs", d["checked"] or d["candidates"], verify,
             mem.peak(a + search, a + search + verify))
    b = a + search + verify
    steps = sec["hash"] + sec.get("probe", 0.0) + search + verify
    p1, p2 = mem.peak(t0, t0 + sec["ingest"]), mem.peak(b, t1)
    rows.add("rest", "the rest (ingest, tables, groups, ledger written)", "images", n,
             max(1e-6, (t1 - t0) - steps),
             tuple(max((v for v in pair if v is not None), default=None) for pair in zip(p1, p2)))
    rows.add("dedup", "dedup, whole (as `gpupipe dedup`: ingest, hash, probe, dedup, ledger written)", "images",
             n, t1 - t0, mem.peak(t0, t1), mapped=True,
             note="" if sec["ingest"] > 0.001 else "ingest not included: the sample was listed beforehand")


def _rank_rows(rows: _Rows, device: Device, refs: list, labels: list, options: BenchOptions, mem: _Memory,
               log, scratch: str) -> None:
    """Scoring as `gpupipe.stages.rank.run_job` scores: each image decoded once
    into the run's decoded images (`gpupipe.dali.decoded`, timed once), then
    the forward pass and per-sample scores over them; the same from the files
    (``--decode-cache off``: decode + resize every pass); the bare forward
    pass over inputs held in memory; one augmented training epoch (`train`)
    from the decoded images."""
    import torch

    from gpupipe.dali.augment import AugmentConfig, file_pipeline
    from gpupipe.dali.decoded import decode_once
    from gpupipe.models import nets
    from gpupipe.models.score import score
    from gpupipe.models.train import TrainConfig, train
    from gpupipe.stages.rank import default_score_batch, probe_channels, resolve_schedule

    classes = sorted({str(v) for v in labels if v is not None})
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index.get(str(v), 0) if v is not None else 0 for v in labels], np.int64)
    k = max(2, len(classes))       # unlabelled images: timed with placeholder classes
    channels = probe_channels(device, refs[:64])
    size, batch = options.image_size, default_score_batch(device)
    name = nets.auto_model(channels) if options.model == nets.AUTO else options.model
    model = nets.build(nets.resolve_model(name), k, channels, seed=0).to(device.torch_device)
    rows_all = np.arange(len(refs))
    cuda = device.is_gpu
    note = f"{name}, batch {batch}, {size} px, {channels} channel(s)"
    t0 = time.perf_counter()
    images = decode_once(device, refs, np.ones(len(refs), bool), size=size, channels=channels,
                         directory=os.path.join(scratch, "decoded"))
    t1 = time.perf_counter()
    if images is not None:
        rows.add("decode", "rank's decoded images (each decoded once per run)", "images", len(refs), t1 - t0,
                 mem.peak(t0, t1), note=f"{size} px, {channels} channel(s), uint8")
    sources = {"score_files": refs, **({"score": images.take(rows_all)} if images is not None else {})}
    stages = {"score": "rank scoring (decoded images: forward, per-sample scores)",
              "score_files": "rank scoring from the files (decode, resize, forward, per-sample scores)"}

    def timed(key: str) -> None:
        epochs = file_pipeline(device, sources[key], rows_all, size=size, channels=channels, batch_size=batch)
        t0 = time.perf_counter()
        score(model, epochs, y, torch_device=device.torch_device)
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        rows.add(key, stages[key], "images", len(refs), t1 - t0, mem.peak(t0, t1), note=note)

    for r in range(options.repeat):
        for key in (sources if r % 2 == 0 else reversed(list(sources))):
            timed(key)
        held, count = [], 0
        for x, _ in file_pipeline(device, sources.get("score", refs), rows_all, size=size, channels=channels,
                                  batch_size=batch):
            held.append(nets.as_input(x.to(device.torch_device)).clone())
            count += len(x)
            if count >= HELD:
                break
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            model.eval()
            model(held[0])
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for x in held:
                model(x)
            if cuda:
                torch.cuda.synchronize()
            t1 = time.perf_counter()
        rows.add("forward", "bare forward (the same inputs, in memory)", "images", count, t1 - t0,
                 mem.peak(t0, t1))
        del held
        log(f"  round {r + 1}: " + ", ".join(
            f"{stages[key].split(' (')[0]} {len(refs) / rows.rows[key]['rounds'][-1]:,.0f} images/s"
            for key in sources) + f", bare forward {count / (t1 - t0):,.0f} images/s")
    m = min(len(refs), options.train_limit)
    augment = AugmentConfig.auto(channels=channels, mode="oof")
    cfg = TrainConfig(model=name, image_size=size, epoch_samples=m, max_epochs=1, augment=augment,
                      schedule=resolve_schedule(channels=channels, mode="oof"))
    t0 = time.perf_counter()
    train(device, refs[:m] if images is None else images.take(rows_all[:m]), y[:m], [],
          np.zeros(0, np.int64), num_classes=k, channels=channels, config=cfg, seed=options.seed)
    t1 = time.perf_counter()
    rows.add("train", "training, one augmented epoch", "images", m, t1 - t0, mem.peak(t0, t1),
             note=f"{'photo' if channels == 3 else 'light'} augmentations (auto), batch {cfg.batch_size}"
                  + (", decoded images" if images is not None else ", from the files"))
    log(f"  training: {m / (t1 - t0):,.0f} images/s")


def _result(src, options: BenchOptions, device: Device, full, ing, rows: _Rows, executor: str, n_workers: int,
            t_ingest: float, t_warm: float) -> dict:
    ceiling = rows.rows["ceiling"]
    c_rate = ceiling["items"] / statistics.median(ceiling["rounds"])
    n = ing.table.num_rows
    out_rows = []
    for key, r in rows.rows.items():
        sec = statistics.median(r["rounds"])
        row = {"key": key, "stage": r["stage"], "unit": r["unit"], "items": r["items"], "seconds": round(sec, 4),
               "rounds": r["rounds"], "per_s": round(r["items"] / sec, 1) if sec > 0 else None,
               "sample_images_per_s": round((n if key != "ceiling" else r["items"]) / sec, 1)
               if sec > 0 else None,
               "peak_host_bytes": r["peak_host_bytes"], "peak_device_bytes": r["peak_device_bytes"],
               "note": r["note"]}
        if key in ("decode", "score", "score_files", "forward", "train"):   # their own images, not the sample
            row["sample_images_per_s"] = row["per_s"]
        row["of_decode_ceiling"] = (round(row["sample_images_per_s"] / c_rate, 3)
                                    if row["sample_images_per_s"] else None)
        if r["mapped"] and n_workers > 1:
            row["per_worker_per_s"] = round(row["per_s"] / n_workers, 1)
        out_rows.append(row)
    order = ["ceiling", "hash", "probe", "search", "check", "rest", "dedup", "decode", "score", "score_files",
             "forward", "train"]
    out_rows.sort(key=lambda x: order.index(x["key"]))
    by = {r["key"]: r for r in out_rows}
    ratios = {"dedup_vs_ceiling": by["dedup"]["of_decode_ceiling"], "hash_vs_ceiling": by["hash"]["of_decode_ceiling"]}
    for key in ("score", "score_files"):
        if key in by:
            ratios[f"{key}_vs_forward"] = round(by[key]["per_s"] / by["forward"]["per_s"], 3)
    return {
        "format": FORMAT, "date": time.strftime("%Y-%m-%d %H:%M"), "source": str(src), "layout": ing.layout,
        "sample": {"images": n, "of": full.table.num_rows, "seed": options.seed,
                   "ingest_seconds": round(t_ingest, 3), "warm_read_seconds": round(t_warm, 3)},
        "device": device.kind, "device_note": device.note, "executor": executor, "workers": n_workers,
        "options": asdict(options), "machine": machine(device), "rows": out_rows, "ratios": ratios,
    }


def _bytes(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**30:.2f} GiB"


def format_table(result: dict) -> str:
    """The result as the command prints it: a header, one Markdown table, the ratios."""
    m, s = result["machine"], result["sample"]
    workers = result["workers"] > 1
    v = m["versions"]
    lines = [
        f"gpupipe bench: {s['images']:,} of {s['of']:,} images of {result['source']} ({result['layout']}, "
        f"seed {s['seed']}) on {result['device']}, {result['executor']}; {len(result['rows'][0]['rounds'])} round(s), "
        f"{result['date']}",
        f"machine: {m['cpu']}, {m['cores_usable']} of {m['cores']} cores (torch {m['torch_cpu_capability']}), "
        f"{m['memory_gib']} GiB; GPU: {m['gpu'] or 'none'}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        "",
        "| stage | work | seconds | rate | of decode ceiling |" + (" per worker |" if workers else "")
        + " peak host | peak GPU |",
        "|---|---:|---:|---:|---:|" + ("---:|" if workers else "") + "---:|---:|",
    ]
    for r in result["rows"]:
        unit = "images" if r["unit"] in ("images", "pictures", "copies") else r["unit"]
        share = "-" if r["of_decode_ceiling"] is None else f"{r['of_decode_ceiling']:.0%}"
        rate = "-" if r["per_s"] is None else f"{r['per_s']:,.0f} {unit}/s"
        per_worker = (f" {r['per_worker_per_s']:,.0f} |" if "per_worker_per_s" in r else " |") if workers else ""
        lines.append(f"| {r['stage']} | {r['items']:,} {r['unit']} | {r['seconds']:.2f} | {rate} | {share} |"
                     f"{per_worker} {_bytes(r['peak_host_bytes'])} | {_bytes(r['peak_device_bytes'])} |")
    ra = result["ratios"]
    tail = [f"whole dedup / decode ceiling: {ra['dedup_vs_ceiling']:.0%}",
            f"hash stage / decode ceiling: {ra['hash_vs_ceiling']:.0%}"]
    if "score_vs_forward" in ra:
        tail.append(f"scoring / bare forward: {ra['score_vs_forward']:.0%}")
    if "score_files_vs_forward" in ra:
        tail.append(f"scoring from the files / bare forward: {ra['score_files_vs_forward']:.0%}")
    return "\n".join(lines + [""] + ["; ".join(tail)])
