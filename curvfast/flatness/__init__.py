"""Parameter-space curvature: the Hessian of the mean training loss w.r.t. the weights, over a dataset.

``param_curvature(model, data, statistic="trace" | "top_eigenvalues" | "density")``: batched Hutchinson
(optionally Lanczos-deflated) for tr(H), Lanczos with full reorthogonalisation for the top eigenvalues, stochastic
Lanczos quadrature for the spectral density; Hessian-vector products streamed per batch (docs/flatness.md).
"""
from curvfast.flatness._lanczos import LanczosRuns, lanczos, ritz
from curvfast.flatness._operator import HVP_METHODS, LossHessian
from curvfast.flatness._param_curvature import PARAM_STATISTICS, ParamCurvature, param_curvature

__all__ = ["param_curvature", "ParamCurvature", "PARAM_STATISTICS", "HVP_METHODS", "LossHessian", "lanczos", "ritz",
           "LanczosRuns"]
