"""Drop-ins for DeepakTatachar/Curvature-Clues (Ravikumar et al., "Curvature Clues", NeurIPS 2024).

One module per published script under ``precompute_scores/``, each defining that script's scorer.
"""
__all__: list[str] = []
