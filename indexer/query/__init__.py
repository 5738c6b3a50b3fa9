"""Query: from a question (or an image) to retrieved frames, spans, a token budget, context
tokens and an answer that cites its moments."""
