"""Sources decoded with PyAV and sampled by presentation time. The records a reader yields
(`SampledFrame`, `Gap`, `SourceInfo`) live in indexer.batches, its options (`ReaderOptions`) in
indexer.settings: the ground floor, below everything that takes them."""

from indexer.media.reader import SourceReader
from indexer.media.source import Source, SourceError, parse_source

__all__ = ["Source", "SourceError", "SourceReader", "parse_source"]
