"""The Prefect tasks (installed as `ocrfleet.tasks`) and the Prefect-only glue: artifacts, the cancel watch,
deploy. They are thin: the work is done by the plain modules in the `ocrfleet` package."""
