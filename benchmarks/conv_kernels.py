"""How fast do PyTorch's convolutions run the Conv4 layers of a MAML step? The ceiling behind peers.py.

    python benchmarks/conv_kernels.py                 # the b32 query pass: 32 tasks x 75 images, 28x28
    python benchmarks/conv_kernels.py --tasks 8 --images 5 --device cuda

Every library in benchmarks/peers.py performs the same convolutions (its FLOP count is the same batched and
looped), so how fast they can run bounds every implementation's speed. For each 3x3 stride-2 layer of Conv4
(64 filters), at the shapes of one configuration, this times forward + backward (weight gradient, and input
gradient except for the first layer, whose input is data) in three ways: one convolution per task with its
own weights (what the loop libraries do), one convolution grouped by task (what vmap does with per-task
weights), and the same with channels_last memory. It reports GFLOP/s and the share of the machine's sgemm.

Writes benchmarks/results/conv_kernels-<device>.json and .md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, markdown_table, write_atomic, write_json  # noqa: E402
from peers import sgemm_gflops, sync  # noqa: E402

FILTERS = 64


def layers(image_size: int) -> list[tuple[int, int]]:
    """(in_channels, input size) of Conv4's four strided blocks."""
    sizes, size = [], image_size
    for channels in (1, FILTERS, FILTERS, FILTERS):
        sizes.append((channels, size))
        size = (size + 1) // 2
    return sizes


def layer_flops(tasks: int, images: int, channels: int, size: int) -> int:
    """FLOPs of one layer's forward and backward for every task (no input gradient for the data layer)."""
    out_size = (size + 1) // 2
    forward = 2 * tasks * images * out_size**2 * FILTERS * channels * 9
    return forward * (2 if channels == 1 else 3)


def time_it(step, device: str, repeats: int) -> float:
    times = []
    for i in range(repeats + 3):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def layer_steps(tasks: int, images: int, channels: int, size: int, device: str):
    """The three ways to run one layer forward and backward for every task; returns {name: step}."""
    data = channels == 1  # the first layer's input needs no gradient
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tasks, images, channels, size, size, generator=g).to(device)
    w = torch.randn(tasks, FILTERS, channels, 3, 3, generator=g).to(device)

    def per_task():
        xs = [x[t].detach().requires_grad_(not data) for t in range(tasks)]  # views: no copies
        ws = [w[t].detach().requires_grad_() for t in range(tasks)]
        out = sum(F.conv2d(xt, wt, stride=2, padding=1).square().sum() for xt, wt in zip(xs, ws))
        torch.autograd.grad(out, ws if data else xs + ws)

    def grouped(memory_format=torch.contiguous_format):
        def step():
            xg = x.transpose(0, 1).reshape(images, tasks * channels, size, size)
            xg = xg.contiguous(memory_format=memory_format).requires_grad_(not data)
            wg = w.reshape(tasks * FILTERS, channels, 3, 3).detach().requires_grad_()
            out = F.conv2d(xg, wg, stride=2, padding=1, groups=tasks).square().sum()
            torch.autograd.grad(out, [wg] if data else [xg, wg])
        return step

    return {"one per task": per_task, "grouped by task": grouped(),
            "grouped, channels_last": grouped(torch.channels_last)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--images", type=int, default=75, help="images per task (b32's query set: 75)")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    for name in ("tasks", "images", "image_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU; use --device cpu")

    sgemm = sgemm_gflops(args.device)
    rows, totals = [], {}
    for index, (channels, size) in enumerate(layers(args.image_size)):
        flops = layer_flops(args.tasks, args.images, channels, size)
        for way, step in layer_steps(args.tasks, args.images, channels, size, args.device).items():
            seconds = time_it(step, args.device, args.repeats)
            gflops = flops / seconds / 1e9
            totals.setdefault(way, [0.0, 0.0])
            totals[way][0] += flops
            totals[way][1] += seconds
            rows.append({"layer": index + 1, "in": f"{channels}x{size}x{size}", "way": way, "ms": 1000 * seconds,
                         "gflop": flops / 1e9, "gflops": gflops, "sgemm_share": gflops / sgemm})
            print(f"layer {index + 1} {way:24s} {1000 * seconds:8.2f} ms {gflops:7.1f} GFLOP/s", file=sys.stderr)
    for way, (flops, seconds) in totals.items():
        rows.append({"layer": "all", "in": "", "way": way, "ms": 1000 * seconds, "gflop": flops / 1e9,
                     "gflops": flops / seconds / 1e9, "sgemm_share": flops / seconds / 1e9 / sgemm})

    table = markdown_table(["layer", "input", "way", "ms", "GFLOP", "GFLOP/s", "% of sgemm"],
                           [[r["layer"], r["in"], r["way"], f"{r['ms']:.2f}", f"{r['gflop']:.2f}",
                             f"{r['gflops']:.1f}", f"{100 * r['sgemm_share']:.0f}"] for r in rows])
    text = (f"{table}\n\nConv4 3x3 stride-2 convolutions with {FILTERS} filters, forward + backward, {args.tasks} "
            f"tasks x {args.images} images of {args.image_size}x{args.image_size}, median of {args.repeats} after 3 "
            f"warm-up runs, {args.device}, {torch.get_num_threads()} threads. sgemm (2048x2048 torch.mm): "
            f"{sgemm:.1f} GFLOP/s. Machine: {machine()}.\n")
    print(text)
    stem = RESULTS / f"conv_kernels-{args.device}"
    write_json(stem.with_suffix(".json"), {"machine": machine(), "device": args.device, "sgemm_gflops": sgemm,
                                           "tasks": args.tasks, "images": args.images, "rows": rows})
    write_atomic(stem.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
