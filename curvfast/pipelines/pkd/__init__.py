"""Progressive knowledge distillation (PKD) of early exits and WISE on compressed video (docs/pkd.md).

``networks``: the three stream ResNets with internal classifiers; ``pkd``: the teacher schedule
and the CE / PKD training of the ICs; ``training``: stream training and exit logits; ``wise``:
per-prefix weights with L1 and the thresholded early exit; ``macs``: compute per exit;
``pipeline``: the whole experiment (``curvfast pkd``).
"""
from curvfast.pipelines.pkd.macs import count_macs, exit_macs
from curvfast.pipelines.pkd.networks import STREAM_ORDER, InternalClassifier, StreamNet, build_exits, build_streams
from curvfast.pipelines.pkd.pipeline import EXIT_NAMES, PKDConfig, run_pkd
from curvfast.pipelines.pkd.pkd import PUBLISHED_BOUNDARIES, pkd_teacher, soft_cross_entropy, train_exits
from curvfast.pipelines.pkd.training import collect_exit_logits, train_streams
from curvfast.pipelines.pkd.wise import fit_prefix_weights, fit_wise, wise_early_exit, wise_objective, wise_sweep

__all__ = [
    "count_macs", "exit_macs", "STREAM_ORDER", "InternalClassifier", "StreamNet", "build_exits", "build_streams",
    "EXIT_NAMES", "PKDConfig", "run_pkd", "PUBLISHED_BOUNDARIES", "pkd_teacher", "soft_cross_entropy", "train_exits",
    "collect_exit_logits", "train_streams", "fit_prefix_weights", "fit_wise", "wise_early_exit", "wise_objective",
    "wise_sweep",
]
