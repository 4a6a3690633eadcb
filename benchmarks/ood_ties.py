"""Norm-scaling on class-mean similarities: the saturation of the old ``-max softmax`` score, and the log-odds score.

``python -m benchmarks.ood_ties [--optimizer adam --lr 0.01 --epochs 8 --seeds 0,1,2]`` trains the digits 0-5
``small_cnn`` (ID = classes 0-5, OoD = ``curvfast ood``'s five sets), then scores the ID test digits and each OoD
set with MSP and ``NormScalingFeatures``. The old score -p (p = max softmax of the rescaled similarities) is
recomputed from the new one s = log((1 - p) / p) as -1 / (1 + e^s), in float64 (what it returned) and in float32
(pytorch-ood's dtype). Prints a markdown table (mean over seeds) for docs/ood.md.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from curvfast.data import DigitsDataset
from curvfast.models import build_model
from curvfast.ood import MSP, NormScalingFeatures, ood_metrics
from curvfast.pipelines.ood import OOD_SETS, ood_sets
from curvfast.training import TrainRecipe, fit


def _old(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (-1 / (1 + s.double().exp())).to(dtype)


def one_seed(args, seed: int) -> dict:
    train, test = DigitsDataset("train"), DigitsDataset("test")
    x, y = train.images[train.targets < 6], train.targets[train.targets < 6]
    x_id, held = test.images[test.targets < 6], test.images[test.targets >= 6]
    torch.manual_seed(seed)
    model = build_model("small_cnn", 6, 1)
    fit(model, TensorDataset(x, y), TrainRecipe(epochs=args.epochs, batch_size=64, lr=args.lr,
                                                optimizer=args.optimizer, seed=seed))
    nsf = NormScalingFeatures(model).fit(DataLoader(TensorDataset(x, y), batch_size=256))
    scorers = {"msp": MSP(model), "norm_scaling_features (log-odds)": nsf,
               "old -p, float64": lambda t: _old(nsf(t), torch.float64),
               "old -p, float32": lambda t: _old(nsf(t), torch.float32)}
    sets = ood_sets(x_id, held, seed=seed)
    out = {}
    for name, score in scorers.items():
        s_id = score(x_id)
        per_set = [ood_metrics(s_id, score(sets[k])) for k in OOD_SETS]
        ood_all = torch.cat([score(sets[k]) for k in OOD_SETS])
        out[name] = {"auroc": np.mean([m["auroc"] for m in per_set]), "fpr95": np.mean([m["fpr95"] for m in per_set]),
                     "id_at_-1": float((s_id == -1).double().mean()), "ood_at_-1": float((ood_all == -1).double().mean())}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = [one_seed(args, int(s)) for s in args.seeds.split(",")]
    print(f"{args.optimizer} lr {args.lr}, {args.epochs} epochs, seeds {args.seeds}; mean over seeds, in %")
    print("| score | AUROC | FPR95 | ID at exactly -1 | OoD at exactly -1 |\n|---|---|---|---|---|")
    for name in runs[0]:
        v = {k: 100 * np.mean([r[name][k] for r in runs]) for k in runs[0][name]}
        print(f"| {name} | {v['auroc']:.2f} | {v['fpr95']:.2f} | {v['id_at_-1']:.1f} | {v['ood_at_-1']:.1f} |")


if __name__ == "__main__":
    main()
