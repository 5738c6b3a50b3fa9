"""`vidx serve`: the HTTP API and web page over an index root (`create_app`, `serve`)."""

from indexer.server.app import create_app
from indexer.server.serve import check_exposure, serve

__all__ = ["check_exposure", "create_app", "serve"]
