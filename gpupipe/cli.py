"""Command line: one subcommand per stage.

    gpupipe dedup SRC --out RUN_DIR [--device auto|cpu|gpu] [--max-distance D]
                      [--workers N | --scheduler ADDRESS]
    gpupipe demo [--out DIR]        the embedded default dataset, found vs planted

Bad input ends with a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpupipe.device import DeviceError


def _add_dedup_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where to decode and hash (auto: a working GPU if there is one)")
    p.add_argument("--max-distance", type=int, default=None, metavar="BITS",
                   help="pHash Hamming distance (0-64) under which two images are near duplicates "
                        "(default: %(default)s -> 8)")
    p.add_argument("--verify", choices=("fine", "thumbs", "none"), default="fine",
                   help="second check of pHash candidates on the 32x32 thumbnails: 'fine' a 256-bit DCT "
                        "hash (cheap; default), 'thumbs' a shift-tolerant pixel distance (slower on CPU, "
                        "finds small shifts), 'none' accept every candidate as pHash-only tools do")
    p.add_argument("--max-fine-distance", type=int, default=None, metavar="BITS",
                   help="for --verify fine: bits of 256 (default 38)")
    p.add_argument("--max-thumb-distance", type=float, default=None, metavar="D",
                   help="for --verify thumbs: mean difference of standardised pixels (default 0.12)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="start a local Dask cluster of N worker processes (GPU: one per GPU)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster, e.g. tcp://host:8786")
    p.add_argument("--batch-size", type=int, default=512, help="images per DALI batch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpupipe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dedup", help="find invalid images and duplicate groups; write RUN_DIR/ledger.parquet")
    d.add_argument("src", help="an ImageFolder tree (root/<label>/img or root/<split>/<label>/img) "
                               "or a manifest .csv/.parquet with path,label[,split]")
    d.add_argument("--out", required=True, help="run directory to write (created if missing)")
    _add_dedup_options(d)
    m = sub.add_parser("demo", help="write the embedded default dataset (real digits with planted "
                                    "defects), dedup it, print found vs planted")
    m.add_argument("--out", default="demo", help="directory for the dataset and the run (default: %(default)s)")
    _add_dedup_options(m)
    return parser


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=total, desc=stage, unit="img", leave=False))
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _options(args):
    from gpupipe.runner import DedupOptions

    if args.max_distance is not None and not 0 <= args.max_distance <= 64:
        raise ValueError("--max-distance must be between 0 and 64")
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    return DedupOptions(device=args.device, max_distance=args.max_distance,
                        verify=args.verify, max_fine_distance=args.max_fine_distance,
                        max_thumb_distance=args.max_thumb_distance, workers=args.workers,
                        scheduler=args.scheduler, batch_size=args.batch_size)


def format_summary(s) -> str:
    c = s.counts
    h = c["hash_stage"]
    ips = s.images_per_second()
    lines = [
        f"gpupipe dedup: {s.rows} images from {s.source} ({s.layout}) on {s.device}, {s.executor}",
        f"  invalid:      {c['invalid']}" + (f"  {c['invalid_by_reason']}" if c["invalid"] else ""),
        f"  duplicates:   {c['duplicates']} in {c['duplicate_groups']} groups "
        f"{ {k: v for k, v in c['duplicates_by_kind'].items() if k in ('bytes', 'pixels', 'near')} }",
        f"  kept:         {c['kept']}",
        f"  label conflicts: {c['label_conflict_groups']} groups; split leaks: {c['split_leak_groups']} groups",
        f"  work: read {h['read']}, decoded {h['decoded']}, byte twins not decoded {h['byte_twins']}; "
        f"near candidates {c['dedup_stage']['candidates']} within {s.max_distance} bits, "
        f"{c['dedup_stage']['verified']} verified"
        + f" ({', '.join(f'{k} {v}' for k, v in s.verify.items())})",
        f"  time: {s.seconds['total']:.2f} s ({ips['total']:.0f} images/s; hash stage "
        f"{s.seconds['hash']:.2f} s, dedup {s.seconds['dedup']:.2f} s)",
        f"  wrote {Path(s.run_dir) / 'ledger.parquet'} and summary.json",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gpupipe.dali.decode import DaliMissing
    from gpupipe.stages.ingest import SourceError

    try:
        options = _options(args)
        if args.command == "dedup":
            from gpupipe.runner import run_dedup

            summary = run_dedup(args.src, args.out, options, progress=_progress(args.quiet))
            print(format_summary(summary))
            return 0
        if args.command == "demo":
            from gpupipe.demo import run_demo

            return run_demo(Path(args.out), options, progress=_progress(args.quiet))
    except (SourceError, DeviceError, DaliMissing, ValueError, OSError) as e:
        print(f"gpupipe: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
