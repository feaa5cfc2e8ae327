"""Run: one worker subprocess per shard, launched, watched and restarted; the worker process and its OCR
engine; locks on output dirs and GPUs; progress read from the records workers append."""
