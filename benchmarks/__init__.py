"""curvfast benchmarks: each compares against a baseline in the same run (never unit tests)."""
