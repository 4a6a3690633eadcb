"""Drop-ins for Privacy-Memorization-Curvature's ``utils/``."""
__all__: list[str] = []
