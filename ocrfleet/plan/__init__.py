"""Plan: devices (spec, NVML inventory, placement), models, the ledger of pages already done, and the plan
itself: cost-balanced shards pinned to devices, written to disk before anything runs."""
