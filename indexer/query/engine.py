"""`QueryEngine`: a question over an index root to an answer that cites its moments.

    engine = QueryEngine.open(IndexRoot.at("runs/idx"))   # settings: the ones saved in the index
    answer = engine.ask("when does the courier leave?", SearchFilter(streams=("cam1",)))
    hits = engine.search(text="a red van", k=10)          # or image=uint8 RGB [H, W, 3]

The order of the work: embed the question -> FAISS top-k within the filters -> rerank by
context attention -> spans -> token budget -> context and content tokens over the chosen
frames -> prompt with timestamps -> LLM.

Patch features come from indexer.query.patch_features: stored, or recomputed from the source
for the frames asked for; a frame with neither goes to the LLM with its stored content tokens
only (no context token), and the answer says which spans and why (`Answer.degraded`)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch

from indexer.embedding import ImageTextEmbedder
from indexer.encoding import model_fingerprint
from indexer.llamavid import LlamaVid
from indexer.llamavid.conversation import get_template
from indexer.llm.backends import make_backend
from indexer.llm.base import LLMBackend, llm_parts
from indexer.query.answer import Answer, Citation
from indexer.query.budget import TokenCosts, TokenPlan, plan_tokens
from indexer.query.prompt import (
    PromptFrame,
    PromptSpan,
    Turn,
    conversation_prompt,
    span_header,
    time_label,
    video_text,
)
from indexer.query.patch_features import PatchFeatures, Recomputed, degraded_spans
from indexer.query.rerank import combine_scores, context_relevance
from indexer.query.search import FrameSearch, Hit, SearchFilter
from indexer.query.spans import Span, merge_hits
from indexer.settings import Settings, resolve_model_paths
from indexer.store.index import IndexReader
from indexer.store.manifest import StreamEntry
from indexer.store.root import IndexRoot

FEATURE_CHUNK = 512  # frames whose features are in memory at once


class QueryEngine:
    def __init__(self, root: IndexRoot, model: LlamaVid, embedder: ImageTextEmbedder, llm: LLMBackend,
                 settings: Settings):
        self.root = root
        self.model = model
        self.embedder = embedder
        self.llm = llm
        self.settings = settings
        self.index: IndexReader
        self.refresh(force=True)

    @classmethod
    def open(cls, root: IndexRoot, settings: Settings | None = None) -> QueryEngine:
        """Load the models `settings` name (default: the ones the index was built with, saved in the
        root) and check they are the ones that made the index."""
        index = IndexReader(root)
        settings = root.load_settings() if settings is None else resolve_model_paths(settings)
        m = settings.model
        model = LlamaVid.from_settings(m, parts=llm_parts(settings.llm))
        embedder = ImageTextEmbedder.from_settings(settings)
        layout = index.layout
        if layout is not None:
            if model_fingerprint(model) != layout.model_fingerprint:
                raise ValueError(f"{root} was indexed with the LLaMA-VID model {layout.model_name} (fingerprint "
                                 f"{layout.model_fingerprint}), not {m.model_dir} (fingerprint "
                                 f"{model_fingerprint(model)})")
            if embedder.fingerprint != layout.embedding_fingerprint:
                raise ValueError(f"{root} was indexed with the retrieval embedding {layout.embedding_model} "
                                 f"(fingerprint {layout.embedding_fingerprint or 'of an older version: ingest again'}"
                                 f"), not {embedder.name} (fingerprint {embedder.fingerprint})")
        return cls(root, model, embedder, make_backend(settings.llm, model), settings)

    def refresh(self, force: bool = False) -> bool:
        """See the latest commit (live ingestion keeps committing). True when it changed."""
        index = IndexReader(self.root)
        if not force and index.manifest.generation == self.index.manifest.generation:
            return False
        self.index = index
        self.search_index = FrameSearch(index, self.settings.search)
        self.frames = self.search_index.catalog
        self.patch_features = PatchFeatures(index, self.frames, self.model, self.settings.reader,
                                            self.settings.encoder.max_batch_frames)
        self._subtitle_tokens: dict[int, int] = {}  # frame id -> its subtitle's LLM tokens, counted once
        return True

    def close(self) -> None:
        self.llm.close()

    # -- the index --------------------------------------------------------------------------------
    def streams(self) -> list[StreamEntry]:
        return list(self.index.manifest.streams.values())

    def latest_frame(self, stream_id: str) -> tuple[int, float] | None:
        """(frame id, pts) of a stream's last committed frame (a live stream's newest picture)."""
        segments = [seg for seg in self.index.manifest.streams[stream_id].segments if seg.frames]
        if not segments:
            return None
        frame_id = segments[-1].first_frame_id + segments[-1].frames - 1
        return frame_id, float(self.frames.pts_s[frame_id])

    def thumbnail(self, frame_id: int) -> bytes:
        """The JPEG thumbnail stored with a frame (KeyError: none, the retention policy dropped it)."""
        thumbnail = self.index.frame_row(frame_id, ["thumbnail"])["thumbnail"]
        if thumbnail is None:
            raise KeyError(f"frame {frame_id} has no thumbnail any more: the index's retention policy dropped it "
                           "(index.retention.thumbnails_s)")
        return thumbnail

    # -- search -----------------------------------------------------------------------------------
    def search(self, text: str | None = None, image: np.ndarray | None = None, k: int | None = None,
               where: SearchFilter | None = None) -> list[Hit]:
        """Frames most like a text or an image (uint8 RGB [H, W, 3]), best first."""
        if (text is None) == (image is None):
            raise ValueError("search needs exactly one of text or image")
        k = self._check_k(k)
        if text is not None:
            query = self.embedder.embed_texts([_check_text(text)])[0]
        else:
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError("image must be a uint8 RGB array [H, W, 3]")
            query = self.embedder.embed_images([image])[0]
        return self.search_index.search(query, k, where)

    # -- ask --------------------------------------------------------------------------------------
    def ask(self, question: str, where: SearchFilter | None = None, history: list[Turn] | None = None,
            k: int | None = None) -> Answer:
        with torch_threads(self.settings.query.torch_threads):
            return self._ask(question, where, history, k)

    def _ask(self, question: str, where: SearchFilter | None, history: list[Turn] | None,
             k: int | None) -> Answer:
        question = _check_text(question)
        history = list(history or [])
        q = self.settings.query
        timings: dict[str, float] = {}
        text_queries: dict[int, torch.Tensor] = {}  # the Q-Former's per frame: rerank and context tokens share them
        recomputed = Recomputed()  # patch features decoded again: rerank and context tokens share them
        with _timed(timings, "embed"):
            query = self.embedder.embed_texts([question])[0]
        with _timed(timings, "search"):
            hits = self.search_index.search(query, self._check_k(k), where)
        if q.rerank and len(hits) > 1:
            with _timed(timings, "rerank"):
                hits = self._rerank(hits, question, text_queries, recomputed, timings)
        spans = merge_hits(hits, q.span_gap_s, q.span_pad_s, q.max_spans)
        span_ids = [self._span_frames(span, where) for span in spans]
        spans, span_ids = [s for s, ids in zip(spans, span_ids) if len(ids)], [ids for ids in span_ids if len(ids)]
        scope = self._scope(where)

        with _timed(timings, "plan"):
            plan, prompt_spans, ids = self._plan(question, history, scope, spans, span_ids)
        tokens, missing = self._frame_tokens([f.frame_id for s in prompt_spans for f in s.frames], question,
                                             plan.content_tokens, timings, text_queries, recomputed)
        with _timed(timings, "prompt"):
            if missing:  # those frames go without their context token: fewer placeholders, fewer tokens
                prompt_spans = [_without_context(s, missing) for s in prompt_spans]
                ids = self.model.tokenizer.encode_with_images(conversation_prompt(
                    video_text(prompt_spans, 1 + plan.content_tokens, plan.label_every, q.subtitles), question,
                    history, q.conv_mode))
                keep = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (T, 1 + P), in order
                keep[:, 0] = torch.tensor([f.context for s in prompt_spans for f in s.frames], device=tokens.device)
                tokens = tokens[keep]  # (placeholders, D)
            embeds = self.model.inputs_embeds(ids, tokens)  # (L, D)
        generation = self.llm.generate(embeds, q.max_new_tokens, stop=[get_template(q.conv_mode).stop_str])
        timings["llm_first_token"] = generation.first_token_s
        timings["llm_total"] = generation.total_s

        citations = self._citations(spans, span_ids, prompt_spans)
        answer_history = history + [Turn(question, generation.text)]
        return Answer(question, generation.text, citations, plan.mode, plan.frames, 1 + plan.content_tokens,
                      int(ids.shape[0]), timings, answer_history, degraded_spans(missing, self.frames),
                      recomputed.frames)

    # -- steps ------------------------------------------------------------------------------------
    def _check_k(self, k: int | None) -> int:
        k = self.settings.query.k if k is None else k
        if not isinstance(k, int) or not 1 <= k <= self.settings.query.max_k:
            raise ValueError(f"k must be an integer in 1..{self.settings.query.max_k} (query.max_k), got {k!r}")
        return k

    def _rerank(self, hits: list[Hit], question: str, text_queries: dict[int, torch.Tensor],
                recomputed: Recomputed, timings: dict[str, float]) -> list[Hit]:
        rows = self.patch_features.get([h.frame_id for h in hits], recomputed, timings)
        if not rows.available.any():
            return hits  # no features for any hit: the retrieval order stands
        ids = [h.frame_id for h, ok in zip(hits, rows.available) if ok]
        features = torch.from_numpy(rows.features[rows.available])
        relevance = np.zeros(len(hits))
        relevance[rows.available] = context_relevance(self.model, features, question,
                                                      self._text_queries(ids, features[:, 1:], question, text_queries))
        relevance[~rows.available] = relevance[rows.available].mean()  # a hit without features: neutral
        combined = combine_scores(np.array([h.score for h in hits]), relevance)
        return [hits[i] for i in np.argsort(-combined, kind="stable")]

    def _span_frames(self, span: Span, where: SearchFilter | None) -> np.ndarray:
        start, end = span.start_s, span.end_s
        if where is not None:  # padding never reaches outside the asked-for time range
            start = start if where.start_s is None else max(start, where.start_s)
            end = end if where.end_s is None else min(end, where.end_s)
        return self.frames.between(span.stream_id, start, end)

    def _scope(self, where: SearchFilter | None) -> dict[str, np.ndarray]:
        """Every frame the question may see, per stream (the whole-video mode's frames)."""
        where = where or SearchFilter()
        streams = where.streams if where.streams is not None else tuple(self.frames.streams)
        scope = {s: self.frames.between(s, where.start_s, where.end_s) for s in streams}
        return {s: ids for s, ids in scope.items() if len(ids)}

    def _plan(self, question: str, history: list[Turn], scope: dict[str, np.ndarray], spans: list[Span],
              span_ids: list[np.ndarray]) -> tuple[TokenPlan, list[PromptSpan], torch.Tensor]:
        q = self.settings.query
        context_length = q.context_length or self.model.config.context_length
        count = self.model.tokenizer.encode
        fixed = len(count(conversation_prompt(video_text([], 1), question, history, q.conv_mode)))
        if fixed + q.max_new_tokens >= context_length:  # before any frame: say what to shorten
            raise ValueError(f"the question and its history take {fixed} tokens of the LLM's {context_length}-token "
                             f"context, and the answer needs {q.max_new_tokens} (query.max_new_tokens): shorten the "
                             "question or send fewer history turns")
        whole_ids = np.concatenate(list(scope.values())) if scope else np.zeros(0, np.int64)
        subtitle_tokens = sum(self._subtitle_cost(int(i)) for i in whole_ids if int(i) in self.frames.subtitles) \
            if q.subtitles else 0
        levels = sorted({self.model.config.content_tokens_per_frame, 1}, reverse=True)
        last_s = max((float(self.frames.pts_s[ids[-1]]) for ids in [*scope.values(), *span_ids]), default=0.0)
        label = len(count(time_label(last_s)))  # the longest label: the latest time
        header = max((len(count(span_header(s, last_s, last_s))) for s in {*scope, *(s.stream_id for s in spans)}),
                     default=0)
        shrink = 0
        for _ in range(4):  # the estimate can miss by a few tokens where pieces join: re-plan tighter
            costs = TokenCosts(available=context_length - q.max_new_tokens - fixed - shrink, label=label,
                               span_header=header, subtitle_per_frame=subtitle_tokens / max(1, len(whole_ids)))
            plan = plan_tokens(len(whole_ids), [len(ids) for ids in span_ids], levels, costs)
            prompt_spans = self._prompt_spans(plan, scope, spans, span_ids)
            text = conversation_prompt(video_text(prompt_spans, 1 + plan.content_tokens, plan.label_every,
                                                  q.subtitles), question, history, q.conv_mode)
            ids = self.model.tokenizer.encode_with_images(text)
            over = ids.shape[0] + q.max_new_tokens - context_length
            if over <= 0:
                return plan, prompt_spans, ids
            shrink += over
        raise ValueError(f"cannot fit the prompt into {context_length} tokens (over by {over})")

    def _subtitle_cost(self, frame_id: int) -> int:
        if frame_id not in self._subtitle_tokens:
            self._subtitle_tokens[frame_id] = len(self.model.tokenizer.encode(self.frames.subtitles[frame_id]))
        return self._subtitle_tokens[frame_id]

    def _prompt_spans(self, plan: TokenPlan, scope: dict[str, np.ndarray], spans: list[Span],
                      span_ids: list[np.ndarray]) -> list[PromptSpan]:
        """The spans as the prompt shows them, in time order."""
        if plan.mode == "whole":
            runs = [(stream_id, ids) for stream_id, ids in scope.items()]
        else:
            order = sorted(range(plan.spans), key=lambda i: (spans[i].stream_id, spans[i].start_s))
            runs = [(spans[i].stream_id, span_ids[i][:: plan.frame_stride]) for i in order]
        out = []
        for stream_id, ids in runs:
            frames = tuple(PromptFrame(int(i), float(self.frames.pts_s[i]), self.frames.subtitles.get(int(i)))
                           for i in ids)
            out.append(PromptSpan(stream_id, frames[0].pts_s, frames[-1].pts_s, frames))
        return out

    def _text_queries(self, frame_ids: list[int], features: torch.Tensor, question: str,
                      known: dict[int, torch.Tensor]) -> torch.Tensor:
        """[t, Q, C] the Q-Former's text queries over these frames' features (long-video path, no
        CLS), run only for frames `known` (frame id -> [Q, C], this question's) does not hold yet."""
        new = [i for i, frame_id in enumerate(frame_ids) if frame_id not in known]
        if new:
            for i, queries in zip(new, self.model.text_queries(features[new], question)):
                known[frame_ids[i]] = queries
        return torch.stack([known[frame_id] for frame_id in frame_ids])

    def _frame_tokens(self, frame_ids: list[int], question: str, content_tokens: int, timings: dict[str, float],
                      text_queries: dict[int, torch.Tensor] | None = None,
                      recomputed: Recomputed | None = None) -> tuple[torch.Tensor, dict[int, str]]:
        """([T, 1 + P, D] over the chosen frames, {frame id: why it has no features}), a chunk of
        features in memory at a time. A frame without features gets its stored content tokens and
        zeros for a context token it does not have (the prompt leaves that slot out).
        `text_queries`, `recomputed`: this question's per frame, reused and added to."""
        text_queries = {} if text_queries is None else text_queries
        recomputed = Recomputed() if recomputed is None else recomputed
        out, missing = [], {}
        timings.setdefault("features", 0.0)
        timings.setdefault("context_tokens", 0.0)
        for start in range(0, len(frame_ids), FEATURE_CHUNK):
            chunk = frame_ids[start:start + FEATURE_CHUNK]
            with _timed(timings, "features"):
                rows = self.patch_features.get(chunk, recomputed, timings)
                for frame_id in chunk:  # used once here: a whole film's recomputed features never pile up
                    recomputed.features.pop(frame_id, None)
                missing.update(rows.missing)
                ok = torch.from_numpy(rows.available).to(self.model.device)
                features = torch.from_numpy(rows.features[rows.available])[:, 1:]  # (t, N, C): long-video path, no CLS
            with _timed(timings, "context_tokens"):
                tokens = torch.zeros(len(chunk), 1 + content_tokens, self.model.config.hidden_size,
                                     dtype=self.model.dtype, device=self.model.device)
                if ok.any():
                    known = [i for i, y in zip(chunk, rows.available) if y]
                    queries = self._text_queries(known, features, question, text_queries)
                    tokens[ok, :1] = self.model.context_tokens(features, question, queries)  # (t, 1, D)
                    tokens[ok, 1:] = self.model.content_tokens(features, content_tokens)  # (t, P, D)
                if not ok.all():
                    tokens[~ok, 1:] = self._stored_content(np.asarray(chunk)[~rows.available], content_tokens)
                out.append(tokens)
        return torch.cat(out), missing

    def _stored_content(self, frame_ids: np.ndarray, content_tokens: int) -> torch.Tensor:
        """[t, content_tokens, D] from the content tokens the timeline stores ([t, P, D]). One token is
        their mean: the model's own one token pools the patches before its projector, so this equals it
        for a linear projector and comes near it for an MLP one."""
        stored = torch.from_numpy(self.index.content_tokens(frame_ids)).to(device=self.model.device,
                                                                            dtype=self.model.dtype)
        return stored.mean(1, keepdim=True) if content_tokens != stored.shape[1] else stored

    def _citations(self, spans: list[Span], span_ids: list[np.ndarray],
                   prompt_spans: list[PromptSpan]) -> list[Citation]:
        sent = {f.frame_id for s in prompt_spans for f in s.frames}
        citations = []
        for span, ids in zip(spans, span_ids):
            used = tuple(int(i) for i in ids if int(i) in sent)
            if not used:
                continue
            start_s, end_s = float(self.frames.pts_s[used[0]]), float(self.frames.pts_s[used[-1]])
            citations.append(Citation(span.stream_id, start_s, end_s, used, span.hits[0], span.score))
        return citations


def _without_context(span: PromptSpan, missing: dict[int, str]) -> PromptSpan:
    """The span with its frames that have no features marked: they go without a context token."""
    frames = tuple(replace(f, context=False) if f.frame_id in missing else f for f in span.frames)
    return replace(span, frames=frames)


@contextmanager
def torch_threads(count: int):
    """torch's CPU threads for this thread's work inside the block (0: leave torch's default).
    Why: a question's ops are small; threads that meet at a barrier after each one lose most of
    their time when other work (an ingest) holds the cores and one of them waits for a core."""
    if count == 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _timed(timings: dict[str, float], name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the question must be a non-empty string, got {text!r}")
    return text.strip()


__all__ = ["QueryEngine"]
