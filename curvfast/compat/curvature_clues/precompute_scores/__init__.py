"""Drop-ins for the scorers defined in Curvature-Clues' ``precompute_scores/`` scripts, one module per script."""
__all__: list[str] = []
