"""Drop-ins for purdue-nrl/Memorization-Curvature (Garg et al., ICML 2024): ``score_imagenet_checkpoint``."""
__all__: list[str] = []
