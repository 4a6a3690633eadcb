"""PKD + WISE on compressed video (I-frame / MV / residual streams) -> run folder (docs/pkd.md).

Trains three CoViAR streams on MPEG-4 Part 2 video, internal classifiers by cross-entropy and by
progressive knowledge distillation (PKD), and WISE (per-prefix exit weights with L1, thresholded
early exit); writes results.json, logits.npz, models.pt and accuracy-vs-MACs plots to --out.

``flatness``: tr(H) and the top eigenvalue of each stream's training-loss Hessian (``curvfast.param_curvature``)
and the teacher order they imply; ``networks``: the three stream ResNets with internal classifiers; ``pkd``: the teacher schedule
and the CE / PKD training of the ICs; ``training``: stream training and exit logits; ``wise``:
per-prefix weights with L1 and the thresholded early exit; ``macs``: compute per exit;
``video``: the compressed-domain data; ``pipeline``: the whole experiment (:class:`Config`, :func:`run`).
"""
from curvfast.pipelines.pkd.flatness import PUBLISHED_HIERARCHY, flatness_order, stream_flatness, summarise_flatness
from curvfast.pipelines.pkd.macs import count_macs, exit_macs
from curvfast.pipelines.pkd.networks import (BACKBONES, STREAM_ORDER, InternalClassifier, StreamNet, TorchvisionStream,
                                             build_exits, build_streams)
from curvfast.pipelines.pkd.pipeline import EXIT_NAMES, PRESETS, PUBLISHED, Config, run, summary
from curvfast.pipelines.pkd.pkd import (EXIT_OPTIMIZERS, PUBLISHED_BOUNDARIES, PUBLISHED_EXIT_LR, PUBLISHED_LR_STEPS,
                                        PUBLISHED_ORDER, exit_learning_rate, pkd_teacher, train_exits)
from curvfast.pipelines.pkd.training import collect_exit_logits, train_streams
from curvfast.pipelines.pkd.wise import (FIRST_EXITS, PUBLISHED_SGD, WISE_SOLVERS, fit_prefix_weights, fit_wise,
                                         sgd_prefix_weights, wise_early_exit, wise_objective, wise_sweep)

__all__ = [
    "Config", "PRESETS", "PUBLISHED", "run", "summary",
    "count_macs", "exit_macs", "STREAM_ORDER", "BACKBONES", "InternalClassifier", "StreamNet", "TorchvisionStream",
    "build_exits", "build_streams",
    "EXIT_NAMES", "PUBLISHED_BOUNDARIES", "PUBLISHED_ORDER", "EXIT_OPTIMIZERS", "PUBLISHED_EXIT_LR", "PUBLISHED_LR_STEPS",
    "exit_learning_rate", "pkd_teacher", "train_exits",
    "PUBLISHED_HIERARCHY", "flatness_order", "stream_flatness", "summarise_flatness",
    "collect_exit_logits", "train_streams", "fit_prefix_weights", "fit_wise", "wise_early_exit", "wise_objective",
    "wise_sweep", "sgd_prefix_weights", "WISE_SOLVERS", "FIRST_EXITS", "PUBLISHED_SGD",
]
