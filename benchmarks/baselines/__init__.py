"""Baselines for the benchmarks, written the way published/common code does it. Not library code."""
