"""The index root: Parquet timeline, memory-mappable patch features, FAISS vectors, a manifest.

The names below load their module on first use, so that importing `indexer.store.manifest` (all an
encoder needs, for `Layout`) does not pull in pyarrow and FAISS."""

import importlib

_WHERE = {"IndexReader": "indexer.store.index", "Layout": "indexer.store.manifest",
          "Manifest": "indexer.store.manifest", "StreamEntry": "indexer.store.manifest",
          "AppendResult": "indexer.store.writer", "IndexWriter": "indexer.store.writer"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'indexer.store' has no attribute {name!r}")


__all__ = ["AppendResult", "IndexReader", "IndexWriter", "Layout", "Manifest", "StreamEntry"]
