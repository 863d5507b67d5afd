"""Table and figure builders that read run outputs (summary.json, metrics.jsonl)."""
