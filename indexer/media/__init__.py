"""Sources decoded with PyAV and sampled by presentation time."""

from indexer.media.reader import Gap, SampledFrame, SourceInfo, SourceReader
from indexer.media.source import ReaderOptions, Source, SourceError, parse_source

__all__ = ["Gap", "ReaderOptions", "SampledFrame", "Source", "SourceError", "SourceInfo", "SourceReader",
           "parse_source"]
