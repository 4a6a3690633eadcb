"""``python -m benchmarks``: run every benchmark; each writes JSON + markdown to benchmarks/results/."""
from benchmarks import exact_vs_naive

exact_vs_naive.main([])
