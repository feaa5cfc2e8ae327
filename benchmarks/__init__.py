"""ocrfleet's benchmark suite: `python -m benchmarks.run [--quick] [--only NAME ...]` writes RESULTS.md."""
