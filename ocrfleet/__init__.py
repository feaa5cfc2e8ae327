"""ocrfleet: multi-GPU batch OCR with PaddleOCR, orchestrated by Prefect.

The library, grouped by the stages a page goes through; none of it imports Prefect:

- `ocrfleet.inputs`: finding inputs (paths, globs, manifests, URLs), storage, reading a page's pixels;
- `ocrfleet.plan`: devices and NVML, placement, models, the ledger of done pages, and the written plan;
- `ocrfleet.run`: launching one worker per shard, the worker process itself, the OCR engine, locks, progress;
- `ocrfleet.reduce`: reconciling records with the plan, summary, outputs, publish;
- `ocrfleet.config` (the one job config), `ocrfleet.records` (what crosses process boundaries),
  `ocrfleet.corpus` (one job across many machines) and `ocrfleet.cli`.

The Prefect layer sits in the repository's `flows/` and `tasks/` folders, installed as `ocrfleet.flows` and
`ocrfleet.tasks`.
"""
