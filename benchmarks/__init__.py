"""Side-by-side performance runs against peers (`expert bench`, `make bench`); see benchmarks/run.py."""
