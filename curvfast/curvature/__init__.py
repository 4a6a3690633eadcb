"""Per-sample input loss curvature: ``input_curvature(model, x, y, method=..., statistic=...)``.

H_b = ∂²L_b/∂x_b² for the cross-entropy L_b of sample b. The methods are the registered estimators
(:data:`ESTIMATORS`, :func:`register_estimator`; docs/estimators.md gives their math):

========== ============================================ ==============================
method     what it returns                              when it is exact
========== ============================================ ==============================
exact      tr(H), ‖H‖_F, top eigenvalue, spectrum       piecewise-linear nets (C VJPs)
sampled    tr(H): top-m classes + stratified p-tail     unbiased, for large C
hutchinson tr(H) or ‖H‖_F from exact HVPs, with stderr  unbiased, any smooth model
deflated   tr(H) = exact Gauss-Newton trace + residual  unbiased, with stderr; exact when
           deflated on the Gauss-Newton range          D ≤ top_classes + probes
fd         Garg et al.: mean‖∇L(x+hr)−∇L(x)‖ ≈ h‖H‖_F   published estimator
zo         Curvature Clues, loss values only ≈ h√(2/π)‖H‖_F  published estimator
auto       exact (PL, C ≤ 100), sampled (PL, C > 100), deflated otherwise
           (hutchinson for a smooth model's Frobenius norm)
========== ============================================ ==============================

Higher values mean more curved. Random probes are keyed by (seed, sample id, probe index):
pass the samples' dataset indices as ``sample_ids`` and results do not depend on batching.
"""
from curvfast.curvature._checks import is_piecewise_linear
from curvfast.curvature._dispatch import STATISTICS, CurvatureResult, input_curvature, resolve_method, sample_ids_for
from curvfast.curvature._model import LogitFn, scoring_mode, unwrap_model
from curvfast.curvature._precision import PRECISIONS
from curvfast.curvature._registry import (DEFAULT_PROBES, ESTIMATORS, METHODS, Estimate, EstimateCall, Estimator,
                                         get_estimator, register_estimator, unregister_estimator)

__all__ = ["input_curvature", "CurvatureResult", "METHODS", "STATISTICS", "DEFAULT_PROBES", "resolve_method",
           "is_piecewise_linear", "sample_ids_for", "ESTIMATORS", "Estimator", "EstimateCall", "Estimate",
           "register_estimator", "unregister_estimator", "get_estimator", "unwrap_model", "scoring_mode", "LogitFn",
           "PRECISIONS"]
