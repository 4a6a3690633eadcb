"""Which spectrum route is faster for one Verifix layer, measured end to end against what
``choose_route`` (``route="auto"``) predicts.

For a 3x3 convolution with ``cin`` input channels on 4x4 maps (a CIFAR ResNet-18's last stage:
d = 9·cin, 16 rows per image) and ``images`` random inputs in batches of 50, each route runs what
Verifix runs for the layer: the streamed sketch (1 pass for "gram", 1 + power iterations for
"randomized"), the result, and the soft projectors of 5 α values. The exact spectrum is asked
for (rank=None), so the randomized route is exact only because rows < d. Rounds alternate the
order of the routes; one thread.

    python -m benchmarks.verifix_routes [--cin 256 512] [--images 100] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from benchmarks.environment import environment, results_dir, write_results
from curvfast.linalg import choose_route, make_sketch
from curvfast.pipelines.verifix import ConvPatches, soft_projector

ROUTES = ("gram", "randomized")
ALPHAS = (3.0, 10.0, 100.0, 1e3, 1e4)


def run_route(route: str, conv: nn.Conv2d, batches: list[torch.Tensor], rows: int) -> dict:
    """Seconds of the sketch passes, the result and the projectors of one layer by ``route``."""
    start = time.perf_counter()
    sketch = make_sketch(conv.weight[0].numel(), rows, route=route)
    while not sketch.done:
        for x in batches:
            sketch.update(ConvPatches(conv, x))
        sketch.end_pass()
    sketched = time.perf_counter()
    spectrum = sketch.result()
    resulted = time.perf_counter()
    for alpha in ALPHAS:
        soft_projector(spectrum, alpha)
    end = time.perf_counter()
    return {"sketch": sketched - start, "result": resulted - sketched, "projectors": end - resulted, "total": end - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cin", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="verifix_routes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    load = [os.getloadavg()[0]]
    rows_out = []
    lines = ["| cin | d | rows | gram s (median, min) | randomized s (median, min) | faster | auto picks |",
             "|---|---|---|---|---|---|---|"]
    for cin in args.cin:
        conv = nn.Conv2d(cin, 512, 3, padding=1, bias=False)
        batches = [torch.randn(50, cin, 4, 4) for _ in range(max(1, args.images // 50))]
        rows, dim = 16 * 50 * len(batches), 9 * cin
        runs = {route: [] for route in ROUTES}
        for r in range(args.rounds):
            for route in ROUTES if r % 2 == 0 else ROUTES[::-1]:
                runs[route].append(run_route(route, conv, batches, rows))
                print(cin, route, {k: round(v, 2) for k, v in runs[route][-1].items()}, flush=True)
        total = {route: [t["total"] for t in runs[route]] for route in ROUTES}
        faster = min(ROUTES, key=lambda route: statistics.median(total[route]))
        picked = choose_route(dim, rows, None)
        rows_out.append({"cin": cin, "dim": dim, "rows": rows, "runs": runs, "faster": faster, "auto": picked})
        cells = [f"{statistics.median(total[r]):.1f}, {min(total[r]):.1f}" for r in ROUTES]
        lines.append(f"| {cin} | {dim} | {rows} | {cells[0]} | {cells[1]} | {faster} | {picked} |")
    load.append(os.getloadavg()[0])
    result = {"settings": vars(args), "environment": environment(torch.device("cpu")), "load_average": load, "layers": rows_out}
    header = [f"# Verifix spectrum routes per layer (`python -m benchmarks.verifix_routes`, {args.images} images, one thread, "
              f"load {load[0]:.1f} → {load[1]:.1f})", ""]
    write_results(results_dir(torch.device("cpu")), args.name, result, "\n".join(header + lines + [""]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
