"""Training cost per image of a model on generated CIFAR-shaped images: the measured base of the
doc pages' paper-scale extrapolations (``python -m benchmarks.train_cost --model cifar_resnet18``)."""
from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import torch

from curvfast.pipelines.common.data import DataOptions, build_network, load_split
from curvfast.training import TrainRecipe, fit
from tests.conftest import write_image_folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="cifar_resnet18")
    parser.add_argument("--images", type=int, default=384, help="training images (6 classes)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_image_folder(pathlib.Path(tmp), classes=6, per_class=args.images // 6, test_per_class=1)
        options = DataOptions(dataset="imagefolder", root=tmp, normalize="cifar10", augment="crop-flip")
        train, info = load_split(options, "train")
        net = build_network(options, args.model, info, (3, 32, 32))
        recipe = TrainRecipe(epochs=1, batch_size=args.batch_size, lr=0.1)
        fit(net, train, recipe, device=args.device)  # warm-up epoch
        start = time.perf_counter()
        fit(net, train, recipe, device=args.device, batch_transform=options.batch_transform(0))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    print(f"{args.model}: one epoch on {len(train)} 32x32 images, batch {args.batch_size}, {args.threads} thread(s), "
          f"{args.device}: {seconds:.1f} s = {seconds / len(train) * 1e3:.1f} ms per image")


if __name__ == "__main__":
    main()
