"""The Prefect flows (installed as `ocrfleet.flows`): plan -> run shards -> reduce, and the corpus flow."""
