"""ocrfleet's working modules; only `tasks.ocr_tasks` imports Prefect."""
