"""curvfast: fast, exact per-sample input loss curvature for PyTorch.

>>> import curvfast
>>> res = curvfast.input_curvature(model, x, y)          # exact trace for ReLU nets
>>> run = curvfast.score(model, dataset, out="runs/demo")  # a whole dataset, to disk
>>> run.to_frame().nlargest(10, "score")                   # the most curved samples, with their files
>>> model = curvfast.load_checkpoint("model.pt")             # any checkpoint a curvfast command wrote
"""
from ._version import __version__  # noqa: E402

from . import ops  # noqa: E402  (native ops or their pure-torch references)
from .curvature import CurvatureResult, input_curvature  # noqa: E402
from .engine import ScoreResult, parse_device, score, score_models  # noqa: E402
from .checkpoints import load_model as load_checkpoint  # noqa: E402
from . import errors  # noqa: E402
from .flatness import ParamCurvature, param_curvature  # noqa: E402

__all__ = ["input_curvature", "CurvatureResult", "score", "score_models", "ScoreResult", "parse_device",
           "load_checkpoint", "errors", "ops", "param_curvature", "ParamCurvature", "__version__"]
