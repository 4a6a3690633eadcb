"""``python -m benchmarks [--device cpu|cuda] [--quick]``: the estimator suite and the op suite.

Each writes JSON (with an environment record) and a markdown table to benchmarks/results/<device>/.
``--quick`` runs the small cases only (digits CNN, CIFAR ResNet-18 at C=10).
"""
import argparse

import torch

from benchmarks import estimators, ops

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()
cases = ["digits_cnn", "resnet18_c10"] if args.quick else list(estimators.CASE_NAMES)
estimators.main(["--device", args.device, "--cases", *cases])
ops.main(["--device", args.device])
