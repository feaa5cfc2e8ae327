"""Reduce: every planned page reconciled with exactly one record; `results.jsonl`, `summary.json` and the
other outputs; publishing a valid run's outputs to `publish_to`."""
