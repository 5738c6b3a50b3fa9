"""Validated settings read from the YAML files in configs/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, model_validator

if TYPE_CHECKING:  # torch is imported where a dtype is needed: the ingest driver and `vidx ask` errors do without it
    import torch

# unknown keys are typos; inf and nan pass every bound (inf > 0) and fail later, deep inside Ray
SETTINGS_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
MAX_FPS = 60.0  # beyond the frame rate of almost every camera: more samples would repeat frames


class ReaderOptions(BaseModel):
    """How sources are opened, decoded and sampled (the `reader:` section of a config)."""

    model_config = SETTINGS_CONFIG

    fps: float = Field(1.0, gt=0, le=MAX_FPS, description=f"samples per second of media time (at most {MAX_FPS}; "
                       "above the source's frame rate a warning says frames repeat)")
    keyframes_only: Literal["auto", "always", "never"] = Field(
        "auto", description="decode keyframes only; 'auto' does when every GOP is at most one sampling interval")
    short_side: int = Field(224, ge=16, description="decoded frames are scaled so their shorter side has this size")
    decoder_threads: int = Field(0, ge=0, description="0: FFmpeg picks")
    open_timeout_s: float = Field(15.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)
    give_up_after_s: float | None = Field(
        None, gt=0, description="a live source that stays unreachable this long ends (None: reconnect forever, "
        "at least every reconnect_max_s)")
    max_discontinuity_s: float = Field(
        60.0, gt=0, description="a forward clock jump beyond this (live, MPEG-TS, HLS) is a discontinuity: a gap")
    max_hold_s: float = Field(
        10.0, gt=0, description="a frame stands for sample times at most this long after its own; a longer "
                                "stall without picture is a gap")
    max_decode_errors: int = Field(50, ge=1, description="consecutive undecodable packets before a source fails")


class ModelSettings(BaseModel):
    """Which LLaMA-VID to load and where: the arguments of `LlamaVid.from_pretrained`."""

    model_config = SETTINGS_CONFIG

    model_dir: str
    vision_tower: str | None = None
    image_processor: str | None = None
    qformer: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)


class EmbeddingSettings(BaseModel):
    """The retrieval embedding: a CLIP-family image-text model (hub id or local folder)."""

    model_config = SETTINGS_CONFIG

    model: str = "openai/clip-vit-large-patch14"


class EncoderSettings(BaseModel):
    """The encoder pool: Ray actors that batch frames across streams."""

    model_config = SETTINGS_CONFIG

    actors: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per encoder actor (fractions share a GPU)")
    num_cpus: float = Field(1.0, gt=0)
    resources: dict[str, float] = Field({}, description="Ray custom resources per encoder actor: encoders run only "
                                        "on nodes started with them (`ray start --resources`)")
    max_batch_frames: int = Field(32, ge=1)
    max_wait_s: float = Field(0.05, ge=0, description="how long a partial batch waits for more frames")


class RetentionPolicy(BaseModel):
    """How long a stream keeps what its features and thumbnails cost. Ages are those of a commit's
    file (a few seconds of one stream), by its newest frame: for a live source the wall-clock time
    since that frame was captured, for a file the media time from it to the stream's newest
    committed frame. None is forever. Content tokens, retrieval embeddings and the timeline are
    always kept (a few KB a frame). A live source's recording is kept by media seconds and bytes
    (`recording_s`, `recording_bytes`)."""

    model_config = SETTINGS_CONFIG

    float16_s: float | None = Field(None, ge=0, description="float16 features up to this age, then int4")
    int4_s: float | None = Field(None, ge=0, description="int4 features for this long after float16_s, then none "
                                 "(an index written in int4: set float16_s 0)")
    float16_max_bytes: int | None = Field(None, ge=0, description="beyond this many float16 bytes in a stream, "
                                          "its oldest float16 files become int4")
    int4_max_bytes: int | None = Field(None, ge=0, description="beyond this many int4 bytes in a stream, its "
                                       "oldest int4 files are dropped")
    thumbnails_s: float | None = Field(None, ge=0, description="JPEG thumbnails up to this age")
    # a live source's recording (INDEX/recordings/<stream>/: its video as received, stream-copied
    # into segments) is what its alert clips, playback in the page and recomputed features read;
    # its oldest segments are deleted as new ones close
    recording_s: float | None = Field(120.0, ge=0, description="seconds of media a live source's recording keeps "
                                      "(null: no age limit; 0: no recording, so no clips of live sources)")
    recording_bytes: int | None = Field(None, gt=0, description="bytes a live source's recording keeps at most "
                                        "(null: no size limit); the newest segment is always kept")
    recording_segment_s: float = Field(2.0, gt=0, description="a recording segment starts at the first keyframe "
                                       "after this long")

    @property
    def records(self) -> bool:
        """Whether live sources are recorded at all."""
        return self.recording_s != 0


class RetentionSettings(RetentionPolicy):
    """The index's policy, and per-stream overrides by stream id or id prefix (the longest key that
    is the id or begins it wins; its fields replace the index's, the others stay)."""

    streams: dict[str, RetentionOverride] = Field(default_factory=dict)

    @field_serializer("streams")
    def _only_given(self, streams: dict[str, RetentionOverride]) -> dict[str, dict]:
        """An override saved (ingest-config.yaml) as given: a field it left out must not become null."""
        return {key: value.model_dump(exclude_unset=True) for key, value in streams.items()}

    def for_stream(self, stream_id: str) -> RetentionPolicy:
        base = RetentionPolicy.model_validate(self.model_dump(exclude={"streams"}))
        keys = [key for key in self.streams if stream_id.startswith(key)]
        if not keys:
            return base
        override = self.streams[max(keys, key=len)]
        return base.model_copy(update=override.model_dump(exclude_unset=True))

    def acts(self) -> bool:
        """Whether some rule may convert or drop anything (else the writer plans nothing)."""
        return any(p.float16_s is not None or p.float16_max_bytes is not None or p.int4_max_bytes is not None
                   or p.thumbnails_s is not None for p in (self, *self.streams.values()))


class RetentionOverride(RetentionPolicy):
    """A stream's exceptions to the index's policy: only the fields given count (null: forever)."""


RetentionSettings.model_rebuild()


class IndexSettings(BaseModel):
    """What the index root stores and how often it commits."""

    model_config = SETTINGS_CONFIG

    feature_format: Literal["float16", "int4", "none"] = Field("float16", description="the format new features are "
                                                               "written in (retention may convert them later)")
    retention: RetentionSettings = RetentionSettings()
    commit_interval_s: float = Field(5.0, gt=0)
    thumbnail_width: int = Field(160, ge=16)
    max_vector_shards: int = Field(32, ge=1, description="FAISS shards folded into one beyond this")


class IngestSettings(BaseModel):
    """Per-reader flow control, and how long an ingest waits for a node it lost."""

    model_config = SETTINGS_CONFIG

    batch_frames: int = Field(8, ge=1, description="frames per batch from an archived source (live: 1)")
    max_inflight_batches: int = Field(4, ge=1, description="batches a reader may have in the encoders and writer")
    max_uncommitted_frames: int = Field(512, ge=1, description="a reader waits when this many are not yet committed")
    reader_num_cpus: float = Field(0.5, gt=0)
    node_wait_s: float = Field(300.0, ge=0, description="how long encoders may wait for a live node able to host "
                               "them (theirs died) before the ingest commits and stops with an error")


class SearchSettings(BaseModel):
    """FAISS search over the retrieval embeddings: exact while small, approximate when large.
    Defaults measured at 1M x 512 on 2 CPU threads (docs/benchmarks.md, bench/query_bench.py)."""

    model_config = SETTINGS_CONFIG

    # exact search reads every vector: 0.57 / 1.13 ms for 10k / 20k 512-d vectors on one idle core,
    # many times more when OpenMP threads compete for busy cores; 10k keeps the exact part (the whole
    # index, or the tail not yet in the approximate index) a small share of the 5 ms p99 budget
    exact_max_vectors: int = Field(10_000, ge=1000, description="exact search covers at most this many vectors "
                                   "(at least 1000: fewer cannot train the approximate index)")
    # sqrt(n), not 4*sqrt(n): on 2 cores 1024 lists train in 3.4 s (65k samples), 4096 in 51 s (262k),
    # and at 1M the rescoring, not the list count, sets the recall
    nlist: int | None = Field(None, ge=1, description="IVF lists (None: sqrt(n) rounded to a power of two)")
    pq_bytes: int = Field(128, ge=1, description="PQ code bytes per vector (4-bit fast-scan codes, 2 per byte)")
    nprobe: int = Field(16, ge=1, description="IVF lists probed per query (more for a selective filter)")
    refine: int = Field(16, ge=1, description="candidates per wanted hit rescored with the float16 embeddings")
    use_gpu: Literal["auto", "never"] = Field("auto", description="exact part on the GPU when FAISS has one")


class QuerySettings(BaseModel):
    """From a question to the frames the LLM sees."""

    model_config = SETTINGS_CONFIG

    k: int = Field(32, ge=1, description="frames retrieved per question")
    max_k: int = Field(1000, ge=1, description="largest k a request may ask for")
    span_gap_s: float = Field(4.0, ge=0, description="hits closer than this in one stream join one span")
    span_pad_s: float = Field(2.0, ge=0, description="seconds added before and after each span")
    max_spans: int = Field(8, ge=1)
    rerank: bool = Field(True, description="reorder candidates by the Q-Former's context attention")
    torch_threads: int = Field(1, ge=0, description="torch CPU threads for a question's model work (0: one per "
                               "core); one holds up best beside an ingest, see docs/benchmarks.md")
    context_length: int | None = Field(None, ge=64, description="LLM context (None: the model's own)")
    max_new_tokens: int = Field(256, ge=1)
    subtitles: bool = True
    conv_mode: str = "vicuna_v1"


class LLMSettings(BaseModel):
    """Which backend runs the language model on the assembled input embeddings."""

    model_config = SETTINGS_CONFIG

    backend: Literal["transformers", "vllm", "vllm-server"] = "transformers"
    model: str | None = Field(None, description="vllm: the folder `vidx export-llm` wrote")
    url: str | None = Field(None, description="vllm-server: base URL, e.g. http://127.0.0.1:8000/v1")
    api_key: str | None = None
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=64)
    timeout_s: float = Field(120.0, gt=0)


class WebhookSettings(BaseModel):
    """How alerts are POSTed to the standing queries' webhooks."""

    model_config = SETTINGS_CONFIG

    timeout_s: float = Field(5.0, gt=0, description="per request")
    max_attempts: int = Field(8, ge=1, description="then the delivery is dead-lettered")
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    allow_private: bool = Field(False, description="let vidx serve add webhooks to loopback, private and link-local "
                                "addresses (POST /api/watch), and vidx monitor deliver to any webhook that resolves "
                                "there; vidx watch add takes --allow-private")


class MonitorSettings(BaseModel):
    """Standing queries over newly committed frames (vidx monitor)."""

    model_config = SETTINGS_CONFIG

    evaluator: str = Field("model", description="'model' (retrieval prefilter + LLaMA-VID verification) or "
                           "'package.module:factory' returning a ConditionEvaluator")
    poll_interval_s: float = Field(0.25, gt=0, description="how often new commits are looked for")
    window_frames: int = Field(4, ge=1, description="frames in the window LLaMA-VID verifies")
    merge_gap_s: float = Field(2.0, ge=0, description="an event ends after this long without a positive frame")
    # CLIP-family cosine between a frame and a condition: unrelated pairs score about 0.15, clear
    # matches 0.30+; sensitivity s puts the prefilter threshold at high - s * (high - low)
    score_range: tuple[float, float] = Field((0.15, 0.35), description="(low, high) prefilter threshold range")
    pre_roll_s: float = Field(3.0, ge=0, description="clip starts this long before the event")
    post_roll_s: float = Field(3.0, ge=0, description="clip ends this long after it")
    clip_wait_s: float = Field(15.0, ge=0, description="how long to wait for a live source's recording to cover "
                               "the post-roll (the recording's length: index.retention.recording_s)")
    commit_interval_s: float = Field(1.0, gt=0, description="index commits while monitoring (alert latency)")
    # a live source's reader reports every second whether frames arrive; a source that gives none
    # this long (by the wall clock) raises the signal-lost alert while it is still down. It must
    # exceed the longest normal pause between frames (an HLS source's segment length)
    signal_lost_after_s: float = Field(10.0, gt=0, description="a live source without a frame this long has "
                                       "lost its signal (signal_lost rule)")
    webhooks: WebhookSettings = WebhookSettings()


class Settings(BaseModel):
    model_config = SETTINGS_CONFIG

    model: ModelSettings
    embedding: EmbeddingSettings = EmbeddingSettings()
    reader: ReaderOptions = ReaderOptions()
    encoder: EncoderSettings = EncoderSettings()
    index: IndexSettings = IndexSettings()
    ingest: IngestSettings = IngestSettings()
    search: SearchSettings = SearchSettings()
    query: QuerySettings = QuerySettings()
    llm: LLMSettings = LLMSettings()
    monitor: MonitorSettings = MonitorSettings()

    @model_validator(mode="before")
    @classmethod
    def _ring_became_recording(cls, data: Any) -> Any:
        """Settings written before recordings (an index's saved ingest-config.yaml, a user's config)
        name the clip ring `monitor.ring_s` / `ring_segment_s`: they are the live sources'
        recording now, `index.retention.recording_s` / `recording_segment_s` (which win if given)."""
        if not isinstance(data, dict) or not isinstance(data.get("monitor"), dict):
            return data
        monitor = dict(data["monitor"])
        moved = {new: monitor.pop(old) for old, new in RING_KEYS.items() if old in monitor}
        if not moved:
            return data
        index = data.get("index") or {}
        index = dict(index) if isinstance(index, dict) else index.model_dump()
        retention = index.get("retention") or {}
        retention = dict(retention) if isinstance(retention, dict) else retention.model_dump()
        index["retention"] = moved | retention
        return {**data, "monitor": monitor, "index": index}


RING_KEYS = {"ring_s": "recording_s", "ring_segment_s": "recording_segment_s"}  # monitor.* -> index.retention.*

_MODEL_PATHS = (("model", "model_dir"), ("model", "vision_tower"), ("model", "image_processor"), ("model", "qformer"),
                ("embedding", "model"))


def with_model_paths(settings: Settings, fix) -> Settings:
    """`settings` with each model path replaced by fix(section, name, value)."""
    updates: dict[str, dict[str, str | None]] = {}
    for section, name in _MODEL_PATHS:
        updates.setdefault(section, {})[name] = fix(section, name, getattr(getattr(settings, section), name))
    return settings.model_copy(update={section: getattr(settings, section).model_copy(update=values)
                                       for section, values in updates.items()})


def resolve_model_paths(settings: Settings, base: str | Path | None = None) -> Settings:
    """Model paths relative to `base` (default: the working directory, as the official code reads
    them) made absolute, so that the settings mean the same from any folder and in Ray actors
    that run elsewhere; hub ids and absolute paths pass unchanged. A relative path found nowhere
    fails here, before Ray starts or a model loads."""
    base = Path(base or Path.cwd())

    def fix(section: str, name: str, value: str | None) -> str | None:
        if not value or Path(value).is_absolute():
            return value
        path = base / Path(value).expanduser()
        if path.exists():
            return str(path.resolve())
        if value.startswith((".", "~")) or value.count("/") > 1:  # a path, not a hub id (org/name)
            raise FileNotFoundError(
                f"model path {value!r} not found ({section}.{name}, relative to {base}); run `vidx tiny out/tiny` "
                "for the tiny models, or name the model by absolute path or hub id (`ray job submit --working-dir` "
                "does not upload git-ignored folders such as out/)")
        return value

    return with_model_paths(settings, fix)


def load_settings(path: str | Path) -> Settings:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"settings file {path} not found (relative to {Path.cwd()}); give --config: "
                                "configs/tiny.yaml for the tiny models `vidx tiny out/tiny` writes, "
                                "configs/default.yaml for the real ones (paths relative to the repository root)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read settings {path}: {exc}") from exc
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{path}: {settings_error(exc)}") from None


def settings_error(exc: ValidationError, prefix: str = "") -> str:
    """A validation error in one line naming each bad field: 'reader.fps: Input should be less than
    or equal to 60 (got 1000000.0)'. `prefix` is the dotted path of the model validated."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in (*prefix.split(".")[:bool(prefix)], *error["loc"])) or "settings"
        value = error.get("input")
        shown = f" (got {value!r})" if isinstance(value, (int, float, str)) and len(repr(value)) < 60 else ""
        parts.append(f"{field}: {error['msg']}{shown}")
    return "; ".join(parts)


__all__ = ["MAX_FPS", "EmbeddingSettings", "EncoderSettings", "IndexSettings", "IngestSettings", "LLMSettings",
           "ModelSettings", "MonitorSettings", "QuerySettings", "ReaderOptions", "RetentionOverride", "RetentionPolicy",
           "RetentionSettings", "SearchSettings", "Settings", "WebhookSettings", "load_settings", "resolve_model_paths",
           "settings_error", "with_model_paths"]
