"""The index root: Parquet timeline, memory-mappable patch features, FAISS vectors, a manifest."""

from indexer.store.index import IndexReader
from indexer.store.manifest import Layout, Manifest, StreamEntry
from indexer.store.writer import AppendResult, IndexWriter

__all__ = ["AppendResult", "IndexReader", "IndexWriter", "Layout", "Manifest", "StreamEntry"]
