"""The models' memory layout on this CPU: NCHW against channels-last (NHWC).

    python benchmarks/bench_layout.py [--model small-cnn] [--channels 1] [--size 32] [--rounds 4]

Times, alternating the two layouts, one Adam training step on a batch of 64
and one scoring forward (no grad) on a batch of 256 of random images, the
model built by `gpupipe.models.nets` (which now uses channels-last,
`nets.MEMORY_FORMAT`).  Prints the median ms per step of each.  Run it under
``ATEN_CPU_CAPABILITY=default`` too: the gain depends on the CPU's kernels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gpupipe.models import nets  # noqa: E402


def one(layout, model: str, channels: int, size: int, steps: int = 50) -> tuple[float, float]:
    torch.manual_seed(0)
    m = nets.build(nets.resolve_model(model), 10, channels, seed=0).to(memory_format=layout)
    x = torch.randn(64, channels, size, size).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (64,))
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    for k in range(steps + 5):
        if k == 5:
            t = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = (time.perf_counter() - t) / steps * 1e3
    m.eval()
    xs = torch.randn(256, channels, size, size).contiguous(memory_format=layout)
    with torch.inference_mode():
        m(xs)
        t = time.perf_counter()
        for _ in range(steps):
            m(xs)
    return train, (time.perf_counter() - t) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    res = {"NCHW": [], "channels-last": []}
    for _ in range(args.rounds):
        for name, layout in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
            res[name].append(one(layout, args.model, args.channels, args.size))
    print(f"{args.model}, {args.channels} channel(s), {args.size} px, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print("| layout | training step, batch 64 (ms) | scoring forward, batch 256 (ms) |")
    print("|---|---|---|")
    for name, v in res.items():
        print(f"| {name} | {statistics.median(a for a, _ in v):.2f} | {statistics.median(b for _, b in v):.2f} |")


if __name__ == "__main__":
    main()
