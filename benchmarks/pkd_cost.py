"""Cost of `curvfast pkd` at paper scale, measured on small runs (the base of docs/pkd.md's "Paper scale"):

1. preparing one clip for the disk cache (resize to ``--size``, re-encode as MPEG-4 Part 2, decode
   with motion vectors, accumulate, write): seconds and bytes per clip, for a generated 64x64 source
   clip of ``--frames`` frames;
2. one epoch of stream training and one of IC training (CE + PKD sets) over ``--clips`` clips of
   that size, with the chosen ``--backbone``: seconds per clip (after a warm-up epoch).

Without PyAV (a GPU node) part 1 is skipped and training runs on random inputs of the same shapes.
``python -m benchmarks.pkd_cost --size 224 --frames 180 --backbone coviar --clips 4 --threads 1 [--device cuda]``
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from curvfast.pipelines.pkd import build_exits, build_streams, train_exits, train_streams
from curvfast.pipelines.pkd.video import (GOP_SIZE, ClipSet, CompressedRepresentation, CompressedVideoDataset, SyntheticConfig,
                                          encode_clip, prepare_clip, read_representation, render_clip)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=180, help="frames per clip (UCF-101 averages ~7 s at 25 fps)")
    parser.add_argument("--backbone", default="coviar")
    parser.add_argument("--clips", type=int, default=4, help="clips per training epoch (the batch)")
    parser.add_argument("--classes", type=int, default=101)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prepare_s = cache_bytes = None
    if importlib.util.find_spec("av") is None:  # a GPU node without PyAV: time the training only, on random inputs
        gops, rng = -(-args.frames // GOP_SIZE), np.random.default_rng(0)
        mask = np.arange(args.frames) % GOP_SIZE == 0
        rep = CompressedRepresentation(rng.integers(0, 256, (gops, 3, args.size, args.size), dtype=np.uint8),
                                       rng.standard_normal((args.frames, 2, args.size, args.size)).astype(np.float16),
                                       rng.standard_normal((args.frames, 3, args.size, args.size)).astype(np.float16), mask)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            # a 64x64 synthetic source video; preparing it resizes to --size, as for a UCF-101 clip (320x240)
            frames = render_clip(0, SyntheticConfig(size=64, frames=args.frames), np.random.default_rng(0))
            source = encode_clip(frames, os.path.join(tmp, "source.avi"))
            start = time.perf_counter()
            folder = prepare_clip(source, os.path.join(tmp, "clip"), args.size, None)
            prepare_s = round(time.perf_counter() - start, 2)
            cache_bytes = round(sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 1e6, 2)
            rep = read_representation(folder, mmap=False)
    clips = ClipSet([rep] * args.clips, np.arange(args.clips) % args.classes, [str(c) for c in range(args.classes)])
    loader = DataLoader(CompressedVideoDataset(clips, 3, train=True), batch_size=args.clips)
    torch.manual_seed(0)
    streams = build_streams(args.classes, backbone=args.backbone).to(args.device)
    ce = build_exits(streams, args.classes).to(args.device)
    pkd = copy.deepcopy(ce)
    timings = {}
    for name, step in (("streams", lambda: train_streams(streams, loader, 1)),
                       ("exits", lambda: train_exits(streams, ce, pkd, loader, 1))):
        step()  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        timings[name] = (time.perf_counter() - start) / args.clips
    result = {"size": args.size, "frames": args.frames, "backbone": args.backbone, "threads": args.threads,
              "device": args.device, "prepare_s_per_clip": prepare_s, "cache_mb_per_clip": cache_bytes,
              "stream_epoch_s_per_clip": round(timings["streams"], 3), "exit_epoch_s_per_clip": round(timings["exits"], 3),
              "clips": args.clips}
    print(json.dumps(result))
    if args.out:
        from curvfast.io import write_json

        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
