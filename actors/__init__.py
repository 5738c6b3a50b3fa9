"""Ray actors and job entry points that compose `indexer` pieces into pipelines (ingestion,
query serving, monitoring). `indexer` never imports this package, so it works without Ray."""
