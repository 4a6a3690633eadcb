"""Drop-ins for DeepakTatachar/Privacy-Memorization-Curvature (Ravikumar et al., ICML 2024).

One module per published file defining a scorer: ``calc_curv_fz_models``, ``calc_curv_fz_imagenet_models``,
``private_model_curve_scorer`` and ``utils/loss_curve_score`` (``CurveScore``).
"""
__all__: list[str] = []
