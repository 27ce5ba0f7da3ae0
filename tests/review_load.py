"""A review queue of 5,000 real images and a measurement of the review page on
it, shared by tests/test_review_page.py and benchmarks/bench_review_page.py.

The queue is a real one: Fashion-MNIST test images (Debian's
dataset-fashion-mnist) written as PNGs, deduplicated, and a person-mode rank
with a seed set as large as the queue (no training needed: round 0 queues
the seed set for a person to certify).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


def build_queue(base: Path, n: int = 5000) -> Path:
    """-> a run directory whose pending queue holds ``n`` rows."""
    import numpy as np
    from PIL import Image

    from gpupipe.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
    from gpupipe.loop import RankOptions, run_rank
    from gpupipe.runner import DedupOptions, run_dedup

    images, labels = load_fashion_mnist(split="test")
    tree = base / "tree"
    take = n + n // 20           # a few are duplicates (Fashion-MNIST has some) and leave the queue
    for i in range(take):
        d = tree / FASHION_MNIST_CLASSES[int(labels[i])].replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(images[i])).save(d / f"{i:05d}.png")
    run = base / "run"
    run_dedup(tree, run, DedupOptions(device="cpu"))
    res = run_rank(run, RankOptions(device="cpu", seed_size=n, seed_val=0))
    assert res.stopped == "awaiting review"
    return run


def measure(run: Path, chromium: str, *, decisions: int = 20) -> dict:
    """Open the page on ``run`` in headless Chromium -> timings (seconds) and
    how many thumbnails the server sent."""
    from playwright.sync_api import sync_playwright

    from gpupipe.serve import ReviewServer, ReviewSession

    server = ReviewServer(ReviewSession(run))
    sent = [0]
    real = server.session.image

    def counted(*a, **kw):
        sent[0] += 1
        return real(*a, **kw)

    server.session.image = counted
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out: dict = {}
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = b.new_page(viewport={"width": 1280, "height": 900})
            t = time.perf_counter()
            page.goto(server.url)
            page.wait_for_selector("body[data-ready='1']", timeout=120_000)
            out["seconds_to_ready"] = round(time.perf_counter() - t, 3)
            out["first_contentful_paint_s"] = round(page.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0]?.startTime || -1000") / 1000, 3)
            out["items"] = int(page.evaluate("document.body.dataset.items"))
            page.wait_for_timeout(1000)
            out["thumbnails_sent_after_load"] = sent[0]
            last = page.evaluate("S.items[S.items.length - 1].sample_id")
            t = time.perf_counter()
            page.keyboard.press("End")
            page.wait_for_function(
                f"(() => {{ const i = document.querySelector('#s-{last} img.main');"
                " return i && i.complete && i.naturalWidth > 0; })()", timeout=120_000)
            out["seconds_to_end"] = round(time.perf_counter() - t, 3)
            out["last_is_current"] = page.evaluate("document.body.dataset.current") == str(last)
            page.keyboard.press("Home")
            t = time.perf_counter()
            for k in range(decisions):
                page.keyboard.press("c")
                page.wait_for_function(f"document.body.dataset.decided === '{k + 1}'")
            out["seconds_per_decision"] = round((time.perf_counter() - t) / decisions, 4)
            out["thumbnails_sent"] = sent[0]
            b.close()
    finally:
        server.shutdown()
        server.server_close()
    return out
