"""The review page (`gpupipe review --serve`) on a queue of 5,000 real images,
in headless Chromium: time to first paint, to a page ready to review, to the
last sample (``End``), per decision, and how many thumbnails the server sent.

The queue is tests/review_load.py's: 5,250 Fashion-MNIST test images as PNGs,
deduplicated, and a seed set of 5,000 queued for a person.  Each repeat opens
a fresh browser on a fresh copy of the queue.

    python benchmarks/bench_review_page.py [--repeats 3] [--items 5000]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from review_load import build_queue, measure  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = ap.parse_args()
    if not args.chromium:
        print("Chromium not found (Debian package 'chromium')", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        run = build_queue(Path(tmp) / "base", args.items)
        rows = []
        for r in range(args.repeats):
            copy = Path(tmp) / f"run-{r}"
            shutil.copytree(run, copy)
            rows.append(measure(copy, args.chromium))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nmachine: {platform.node()} ({platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores)")
    keys = ["first_contentful_paint_s", "seconds_to_ready", "seconds_to_end", "seconds_per_decision",
            "thumbnails_sent_after_load", "thumbnails_sent"]
    print("| repeat | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for i, row in enumerate(rows):
        print(f"| {i} | " + " | ".join(str(row[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
