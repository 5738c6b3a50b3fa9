"""The library's commands of `vidx`: info, repair, tiny, ask, export-llm, watch, serve. The
commands that start Ray jobs (ingest, monitor, demo) are added by actors/cli.py, the `vidx`
console script: `indexer` never imports `actors`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indexer.store.root import IndexRoot

logger = logging.getLogger("indexer")


def _cmd_info(args: argparse.Namespace) -> int:
    from indexer.store.info import describe_index, is_index_root
    from indexer.store.repair import check_index
    from indexer.store.root import IndexRoot

    root = IndexRoot.at(args.model)
    if is_index_root(root):
        damage = check_index(root, full=args.verify)
        print("\n".join(describe_index(root)))
        for exc in damage:
            print(f"DAMAGED {exc.file}: {exc.reason}")
        if damage:
            print(f"{len(damage)} damaged files: `vidx repair {args.model}` rolls the index back to its last intact "
                  "state, then ingest the sources again", file=sys.stderr)
        elif args.verify:
            print("verified: every file matches the checksums written at its commit")
        return 1 if damage else 0
    from indexer.llamavid.info import describe

    info = describe(args.model, vision_tower=args.vision_tower, image_processor=args.image_processor,
                    qformer=args.qformer)
    print("\n".join(info.lines()))
    return 1 if info.missing else 0


def _cmd_repair(args: argparse.Namespace) -> int:
    from indexer.store.repair import repair_index
    from indexer.store.root import IndexRoot

    print("\n".join(repair_index(IndexRoot.at(args.index))))
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from indexer.settings import load_settings
    from indexer.store.retention import prune_index
    from indexer.store.root import IndexRoot

    root = IndexRoot.at(args.index)
    if args.config:
        retention = load_settings(args.config).index.retention
    elif root.has_settings():
        retention = load_settings(root.settings_file).index.retention  # the policy the index was ingested with
    else:
        raise FileNotFoundError(f"{root.settings_file} not found: pass the settings whose index.retention to apply "
                                "(--config)")
    print("\n".join(prune_index(root, retention, dry_run=args.dry_run).lines()))
    return 0


def _cmd_tiny(args: argparse.Namespace) -> int:
    from indexer.demo import write_tiny
    from indexer.llamavid.tiny import TinySpec

    spec = TinySpec(compress_type=args.compress_type, mm_projector_type=args.projector, bert_type=args.bert_type,
                    num_query=args.num_query, weights_format=args.format, weights_dtype=args.dtype)
    print("\n".join(write_tiny(args.out, spec).lines()))
    return 0


def parse_time(text: str) -> float:
    """Seconds, or [H:]MM:SS (as the answers write times)."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (use seconds or H:MM:SS)") from None
    if len(parts) > 3 or any(p < 0 for p in parts):
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (use seconds or H:MM:SS)")
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def _check_index(root: IndexRoot, given: str) -> None:
    """An index root is there (checked before the models load)."""
    from indexer.stream_ids import index_stream_ids

    if index_stream_ids(root) is None:
        raise FileNotFoundError(f"{given}: no index here (no {root.manifest.name}); make one with "
                                f"vidx ingest SOURCE --index {given}")


def _check_ask(args: argparse.Namespace, root: IndexRoot) -> list[str] | None:
    """Bad arguments of `vidx ask`, found before torch and the models load (they take seconds);
    returns the --stream ids in full."""
    from pathlib import Path

    from indexer.stream_ids import resolve_stream_ids

    if not args.question.strip():
        raise ValueError('the question is empty; ask one, e.g. vidx ask INDEX "what happens at the door?"')
    _check_index(root, args.index)
    if args.start is not None and args.end is not None and args.start > args.end:
        raise ValueError(f"--from {args.start:g} s is after --to {args.end:g} s")
    if args.config and not Path(args.config).is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file")
    return resolve_stream_ids(args.stream, root) if args.stream else None


def _cmd_ask(args: argparse.Namespace) -> int:
    import json

    from indexer.store.root import IndexRoot

    root = IndexRoot.at(args.index)
    streams = _check_ask(args, root)

    from indexer.query.engine import QueryEngine
    from indexer.query.prompt import clock
    from indexer.query.search import SearchFilter
    from indexer.settings import load_settings

    engine = QueryEngine.open(root, load_settings(args.config) if args.config else None)
    where = SearchFilter(tuple(streams) if streams else None, args.start, args.end)
    answer = engine.ask(args.question, where, k=args.k)
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2))
        return 0
    print(answer.text)
    print(f"\n{answer.mode} mode: {answer.frames} frames x {answer.tokens_per_frame} tokens, "
          f"{answer.prompt_tokens} prompt tokens")
    for c in answer.citations:
        print(f"  [{c.stream_id} {clock(c.start_s)}-{clock(c.end_s)}] frames {c.frame_ids[0]}..{c.frame_ids[-1]} "
              f"(best {c.best_frame_id}, score {c.score:.3f})")
    if answer.recomputed_frames:
        print(f"  patch features of {answer.recomputed_frames} frames recomputed from the source")
    for d in answer.degraded:
        print(f"  content tokens only: [{d.stream_id} {clock(d.start_s)}-{clock(d.end_s)}] {d.frames} frames: "
              f"{d.reason}")
    print("  " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in answer.timings.items()))
    return 0


def _cmd_export_llm(args: argparse.Namespace) -> int:
    from indexer.llm.export import export_llm

    report = export_llm(args.model, args.out, force=args.force, max_shard_bytes=args.max_shard_bytes)
    print("\n".join(report.lines()))
    return 0


def _add_export_llm(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export-llm", help="write the LLM of a LLaMA-VID release as a plain LLaMA folder for vLLM",
        description="Write the language model of a LLaMA-VID release (no vision tower, Q-Former or projector) as a "
                    "LlamaForCausalLM folder, then serve it: vllm serve OUT --enable-prompt-embeds "
                    "--max-model-len N, with settings llm: {backend: vllm-server, url: http://127.0.0.1:8000/v1}.")
    export.add_argument("model", help="LLaMA-VID model folder (config.json, pytorch_model-*.bin or safetensors) "
                                      "or hub repo id")
    export.add_argument("out", help="folder to create (written as OUT.tmp, then renamed)")
    export.add_argument("--force", action="store_true", help="replace OUT if it is not empty")
    export.add_argument("--max-shard-bytes", type=int, default=5_000_000_000,
                        help="largest safetensors shard (default 5e9, as transformers)")
    export.set_defaults(func=_cmd_export_llm)


def _cmd_watch(args: argparse.Namespace) -> int:
    import json

    from indexer.monitor.kinds import DEFAULT_KIND, rule_kind
    from indexer.monitor.queries import QueryStore
    from indexer.monitor.webhooks import delivery_states, read_deliveries
    from indexer.redaction import redact_uri
    from indexer.store.root import IndexRoot
    from indexer.stream_ids import index_stream_ids, match_stream_id, resolve_stream_ids

    root = IndexRoot.at(args.index)
    kind = (args.rule.replace("-", "_") if args.rule else DEFAULT_KIND) if args.action == "add" else None
    if args.action == "add" and rule_kind(kind).takes_condition == (args.condition is None):
        raise ValueError("give either a CONDITION text or --rule black|frozen|signal-lost")
    if args.action != "add" and not root.exists():  # add: queries may come first, `vidx monitor` ingests later
        raise FileNotFoundError(f"{root}: no such index folder (vidx watch add, vidx ingest or vidx monitor "
                                "creates it)")
    store = QueryStore(root)
    deliveries = [] if args.action == "add" else read_deliveries(root.outbox)
    if args.action == "add":
        secret = {"secret": args.secret} if args.secret else {}  # left out: a random one per webhook
        known = index_stream_ids(root) or []  # a stream not there yet is watched when it comes
        streams = [match_stream_id(sid, known) or sid for sid in args.stream or []]
        query = store.create(id=args.id, kind=kind, condition=args.condition, streams=streams,
                             sensitivity=args.sensitivity, cooldown_s=args.cooldown, min_duration_s=args.min_duration,
                             webhooks=[{"url": url, **secret} for url in args.webhook or []],
                             allow_private_webhooks=args.allow_private)
        print(f"added {query.id}: {query.describe()}")
        for hook in query.webhooks:  # a generated secret is shown once: the receiver needs it to check signatures
            print(f"  webhook {redact_uri(hook.url)} secret " + ("as given (--secret)" if args.secret else hook.secret))
        return 0
    if args.action == "list":
        queries = store.load()
        if args.json:
            print(json.dumps([q.public() for q in queries], indent=2))
        for q in [] if args.json else queries:
            streams = ",".join(q.streams) or "all streams"
            hooks = " ".join(_webhook_text(w.url, [d for d in deliveries if d.url == w.url])
                             for w in q.webhooks) or "no webhooks"
            print(f"{q.id}{' (paused)' if q.paused else ''}: {q.describe()} [{streams}] sensitivity {q.sensitivity} "
                  f"cooldown {q.cooldown_s:g} s min {q.min_duration_s:g} s -> {hooks}")
        if not queries and not args.json:
            print(f"no standing queries in {root}")
        return 0
    if args.action in ("pause", "resume"):
        query = store.set_paused(args.query_id, args.action == "pause")
        print(f"{query.id} {'paused' if query.paused else 'resumed'}")
        return 0
    if args.action == "rm":
        print(f"removed {store.remove(args.query_id).id}")
        return 0
    from indexer.monitor.alerts import AlertLog, alert_line

    stream = resolve_stream_ids([args.stream], root)[0] if args.stream and index_stream_ids(root) else args.stream
    alerts = AlertLog(root).alerts(stream_id=stream, query_id=args.query, limit=args.limit)

    def sent(alert) -> list:
        return [d for d in deliveries if d.id.startswith(f"{alert.alert_id}:")]

    if args.json:
        print(json.dumps([{**a.to_json(), "thumbnail": None,
                           "webhooks": [{"url": redact_uri(d.url), "event": d.event, "state": d.state,
                                         "attempts": d.attempts, "last_error": d.last_error} for d in sent(a)]}
                          for a in alerts], indent=2))
    else:
        print("\n".join(alert_line(a) + (f" | webhooks: {delivery_states(sent(a))}" if sent(a) else "")
                        for a in alerts) or f"no alerts in {root}")
    return 0


def _webhook_text(url: str, deliveries: list) -> str:
    """A webhook as `vidx watch list` shows it: its URL and how its deliveries went."""
    from indexer.monitor.webhooks import delivery_states
    from indexer.redaction import redact_uri

    summary = delivery_states(deliveries)
    return f"{redact_uri(url)} [{summary}]" if summary else redact_uri(url)


def _add_watch(sub: argparse._SubParsersAction) -> None:
    watch = sub.add_parser("watch", help="standing queries of an index: add, list, pause, resume, rm; and its alerts",
                           description="Standing queries live in the index's monitor folder; a running vidx "
                                       "monitor picks up changes within a poll.")
    actions = watch.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="a natural-language condition, or a model-free --rule")
    add.add_argument("index", help="index root (created if missing: add queries before the first vidx monitor)")
    add.add_argument("condition", nargs="?", help='e.g. "a person climbs the fence"')
    add.add_argument("--rule", choices=["black", "frozen", "signal-lost"], help="a model-free condition instead")
    add.add_argument("--id", help="query id (default: q1, q2, ...)")
    add.add_argument("--stream", action="append",
                     help="watch only this stream, or the one whose id begins so (repeat; default: every stream)")
    add.add_argument("--sensitivity", type=float, default=0.5, help="0..1, higher fires more easily (default 0.5)")
    add.add_argument("--cooldown", type=float, default=60.0, help="seconds of quiet after an alert (default 60)")
    add.add_argument("--min-duration", type=float,
                     help="seconds an event must last (default: 2 for black, 3 for frozen, else 0)")
    add.add_argument("--webhook", action="append", help="POST alerts to this URL (repeat for several)")
    add.add_argument("--secret", help="HMAC secret for the webhooks (default: a random one, printed once)")
    add.add_argument("--allow-private", action="store_true",
                     help="allow webhooks to loopback, private and link-local addresses (a receiver on this machine "
                          "or the local network); its deliveries may go there too")
    for name in ("list", "pause", "resume", "rm"):
        action = actions.add_parser(name, help={"list": "the standing queries", "pause": "stop evaluating a query",
                                                "resume": "evaluate a paused query again",
                                                "rm": "remove a query"}[name])
        action.add_argument("index", help="index root")
        if name == "list":
            action.add_argument("--json", action="store_true", help="print the queries as JSON (secrets left out)")
        else:
            action.add_argument("query_id", help="the query's id (vidx watch list shows them)")
    alerts = actions.add_parser("alerts", help="the alerts raised, newest first, with their webhook deliveries")
    alerts.add_argument("index", help="index root")
    alerts.add_argument("--stream", help="only this stream's alerts (a unique prefix of its id will do)")
    alerts.add_argument("--query", help="only this query's alerts")
    alerts.add_argument("--limit", type=positive_int, default=50, help="at most this many (default %(default)s)")
    alerts.add_argument("--json", action="store_true", help="print the alerts as JSON (thumbnails left out)")
    watch.set_defaults(func=_cmd_watch)


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    from indexer.server import serve
    from indexer.settings import load_settings
    from indexer.store.root import IndexRoot

    serve(IndexRoot.at(args.index), load_settings(args.config) if args.config else None, host=args.host, port=args.port,
          token=args.token or os.environ.get("VIDX_TOKEN") or None, media_roots=args.media_root,
          access_log=args.verbose)
    return 0


def build_parser(add_job_commands: Callable[[argparse._SubParsersAction], None] | None = None
                 ) -> argparse.ArgumentParser:
    """`vidx`'s parser: the library's commands, then those `add_job_commands` adds to the same
    subcommands (actors/cli.py: the ones that start Ray jobs)."""
    parser = argparse.ArgumentParser(prog="vidx", description="Index and question hours of video with LLaMA-VID.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress, loading details, library and Ray actor output, and full tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe an index root, or a LLaMA-VID model folder")
    info.add_argument("model", metavar="INDEX_OR_MODEL",
                      help="index root (streams, durations, frames, gaps, sizes) or model folder / hub repo id")
    info.add_argument("--vision-tower", help="eva_vit_g.pth to use instead of the one config.json names")
    info.add_argument("--image-processor", help="processor folder to use instead of the one config.json names")
    info.add_argument("--qformer", help="bert-base-uncased folder (config.json, vocab.txt)")
    info.add_argument("--verify", action="store_true",
                      help="index root: check every byte of every file against its commit's checksum (without it: "
                           "sizes and file ends); exit 1 on damage")
    info.set_defaults(func=_cmd_info)

    repair = sub.add_parser("repair", help="roll a damaged index root back to its last intact state (vidx info "
                                           "reports damage); the next ingest reads the dropped frames again")
    repair.add_argument("index", help="index root written by vidx ingest")
    repair.set_defaults(func=_cmd_repair)

    prune = sub.add_parser("prune", help="apply the index's retention policy now: float16 features become int4, "
                                         "old features and thumbnails go; prints what goes and the space freed",
                           description="Applies index.retention (README: Retention) in one commit under the writer "
                                       "lock; a running ingest applies it in its own commits, so prune is refused "
                                       "meanwhile. A prune killed midway leaves the last commit whole; run it again.")
    prune.add_argument("index", help="index root written by vidx ingest")
    prune.add_argument("--dry-run", action="store_true", help="print what would go and the space it frees; "
                                                              "change nothing")
    prune.add_argument("--config", help="settings YAML whose index.retention to apply (default: the settings the "
                                        "index was ingested with)")
    prune.set_defaults(func=_cmd_prune)

    tiny = sub.add_parser("tiny", help="write a tiny random LLaMA-VID in the official layout, a tiny CLIP, settings "
                                       "naming them and a sample clip (for tests and trying things)")
    tiny.add_argument("out", help="folder to create: OUT/model, OUT/clip, OUT/settings.yaml, OUT/sample.mp4")
    tiny.add_argument("--compress-type", default="mean", help="'mean' or 'grid:N'")
    tiny.add_argument("--projector", default="mlp2x_gelu", help="'linear' or 'mlpNx_gelu'")
    tiny.add_argument("--bert-type", default="qformer_pretrain", help="config.json's bert_type (default %(default)s)")
    tiny.add_argument("--num-query", type=positive_int, default=16, help="Q-Former queries (default %(default)s)")
    tiny.add_argument("--format", choices=["bin", "safetensors"], default="bin",
                      help="weights files: pytorch_model-*.bin shards as released, or safetensors "
                           "(default %(default)s)")
    tiny.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                      help="dtype of the stored weights (default %(default)s)")
    tiny.set_defaults(func=_cmd_tiny)

    ask = sub.add_parser("ask", help="ask a question over an index; the answer cites the moments it used")
    ask.add_argument("index", help="index root written by vidx ingest")
    ask.add_argument("question", help='the question, e.g. "when does the courier leave the parcel?"')
    ask.add_argument("--stream", action="append",
                     help="only this stream, or the one whose id begins so (repeat for several)")
    ask.add_argument("--from", dest="start", type=parse_time, help="media time to start at (seconds or H:MM:SS)")
    ask.add_argument("--to", dest="end", type=parse_time, help="media time to end at (seconds or H:MM:SS)")
    ask.add_argument("--k", type=positive_int, help="frames to retrieve (default: query.k)")
    ask.add_argument("--config", help="settings YAML (default: the settings saved in the index)")
    ask.add_argument("--json", action="store_true", help="print the answer, citations and timings as JSON")
    ask.set_defaults(func=_cmd_ask)

    _add_export_llm(sub)
    _add_watch(sub)

    serve = sub.add_parser("serve", help="the HTTP API and web page over an index (question box, cited moments, "
                                         "click to play)")
    serve.add_argument("index", help="index root written by vidx ingest")
    serve.add_argument("--config", help="settings YAML (default: the settings saved in the index)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: %(default)s); any non-loopback address needs a token")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    serve.add_argument("--token", help="required on every /api request (default: $VIDX_TOKEN, which other users "
                                       "cannot see in the process list); the page asks for it")
    serve.add_argument("--media-root", action="append",
                       help="play the streams' source files on the page from this folder (repeat for several; "
                            "default: none, no local file is served)")
    serve.set_defaults(func=_cmd_serve)
    if add_job_commands is not None:
        add_job_commands(sub)

    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llamavid-indexer")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse and run one command through `run_command` (one-line errors, exit codes). `parser`:
    `vidx`'s whole parser (actors/cli.py passes it); default: the library's commands only."""
    from indexer.console import run_parsed

    return run_parsed(parser or build_parser(), argv, lambda args: f"vidx {args.command}", lambda args: args.func(args))

