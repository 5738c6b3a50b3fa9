"""What the commands print: an error raised inside a Ray actor as its own one-line cause, the exit
codes of the one wrapper, FFmpeg errors by name, no BrokenPipe traceback under `| head`, and the
small edges of the command line (--version, help on every option, stream id prefixes, `vidx watch
add` on a new folder)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import ray

from actors.cli import build_parser
from indexer.console import EXIT_BROKEN_PIPE, EXIT_USAGE, error_line, plural, run_command
from indexer.media.reader import SourceReader
from indexer.media.source import SourceError, parse_source
from indexer.settings import ReaderOptions
from indexer.stream_ids import match_stream_id
from tests.actors.jobs import REPO, driver_env


@ray.remote(max_restarts=-1, max_task_retries=-1)
class _Failing:
    def __init__(self, fail_in_init: bool):
        if fail_in_init:
            raise FileNotFoundError("model path 'x' not found; make one with vidx tiny out/tiny")

    def work(self) -> None:
        raise ValueError("stream 'cam' was indexed at 1.0 fps, not 2.0")


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_an_error_inside_a_ray_actor_reaches_the_user_as_its_own_cause(ray_runtime, capsys):
    with pytest.raises(ray.exceptions.RayTaskError) as task_error:
        ray.get(_Failing.remote(False).work.remote())
    assert error_line(task_error.value) == "stream 'cam' was indexed at 1.0 fps, not 2.0"

    with pytest.raises(ray.exceptions.ActorDiedError) as died:  # a constructor that raised: only its text remains
        ray.get(_Failing.remote(True).work.options(max_task_retries=0).remote())
    assert error_line(died.value) == "model path 'x' not found; make one with vidx tiny out/tiny"

    def fail():
        raise died.value

    assert run_command("vidx ingest", fail) == 2  # a missing file is bad input
    err = capsys.readouterr().err
    assert err == "vidx ingest: error: model path 'x' not found; make one with vidx tiny out/tiny\n"
    assert run_command("vidx ingest", fail, verbose=True) == 2
    assert "Traceback" in capsys.readouterr().err  # -v: the whole story


def test_run_command_exit_codes(capsys):
    def bug():
        raise ZeroDivisionError("division by zero")

    def missing():
        raise KeyError("no stream 'x'")

    assert run_command("vidx x", bug) == 1
    assert capsys.readouterr().err == "vidx x: error: ZeroDivisionError: division by zero\n"
    assert run_command("vidx x", missing) == 2
    assert capsys.readouterr().err == "vidx x: error: no stream 'x'\n"  # without the quotes KeyError's str() adds
    assert run_command("vidx x", lambda: 0) == 0
    assert plural(1, "source") == "1 source" and plural(2, "source") == "2 sources"


def test_ffmpeg_errors_are_named_not_numbered(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SourceError) as caught:
        SourceReader(parse_source(str(bad)), ReaderOptions()).open()
    assert "InvalidDataError: Invalid data found when processing input" in str(caught.value)
    assert "Errno" not in str(caught.value)


def test_every_option_has_help():
    def walk(parser: argparse.ArgumentParser, name: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")
            elif not isinstance(action, argparse._HelpAction):
                yield f"{name} {action.dest}", action.help

    missing = [where for where, text in walk(build_parser(), "vidx") if not text]
    assert not missing, f"options without help: {missing}"


def test_stream_id_prefixes():
    known = ["cam1-aa", "cam2-bb", "clip.mp4-9ad3726c"]
    assert match_stream_id("clip", known) == "clip.mp4-9ad3726c"
    assert match_stream_id("cam1-aa", known) == "cam1-aa"
    assert match_stream_id("door", known) is None
    with pytest.raises(ValueError, match="'cam' is ambiguous: it begins cam1-aa, cam2-bb"):
        match_stream_id("cam", known)


def vidx(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], cwd=REPO, env=driver_env(),
                          capture_output=True, text=True, timeout=120, check=False, **kwargs)


def test_vidx_and_the_job_modules_share_one_error_wrapper(tmp_path):
    """`vidx ingest` and `python -m actors.ingest` turn the same bad input into the same one line
    and exit code (both through run_parsed/run_command), before Ray starts."""
    args = [str(tmp_path / "missing.mp4"), "--index", str(tmp_path / "index"), "--config", str(tmp_path / "no.yaml")]
    by_vidx = vidx("ingest", *args)
    by_module = subprocess.run([sys.executable, "-m", "actors.ingest", *args], cwd=REPO, env=driver_env(),
                               capture_output=True, text=True, timeout=120, check=False)
    assert by_vidx.returncode == by_module.returncode == EXIT_USAGE
    assert by_vidx.stderr.startswith("vidx ingest: error: ") and by_module.stderr.startswith("ingest: error: ")
    assert by_vidx.stderr.removeprefix("vidx ") == by_module.stderr
    assert len(by_vidx.stderr.strip().splitlines()) == 1 and "Traceback" not in by_vidx.stderr + by_module.stderr


def test_version():
    done = vidx("--version")
    assert done.returncode == 0 and done.stdout.startswith("vidx 0.")


def test_watch_add_creates_a_new_index_folder_and_list_shows_webhook_deliveries(tmp_path):
    root = tmp_path / "runs" / "cams"  # the README's monitoring example starts here, before any ingest
    added = vidx("watch", "add", str(root), "a person climbs the fence", "--id", "fence", "--stream", "gate",
                 "--webhook", "http://127.0.0.1:9/hooks", "--allow-private")
    assert added.returncode == 0, added.stderr
    assert root.is_dir() and "added fence" in added.stdout
    outbox = root / "monitor" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "deliveries.jsonl").write_text(  # what a monitor's sender records: a submit, then a dead letter
        '{"id":"a1:alert.opened:0","url":"http://127.0.0.1:9/hooks","secret":"s","event":"alert.opened",'
        '"body":"{}","attempts":0,"state":"pending","last_error":null,"created_at":1.0,"next_attempt_at":1.0,'
        '"finished_at":null}\n'
        '{"id":"a1:alert.opened:0","attempts":8,"state":"dead","last_error":"connect error: refused",'
        '"finished_at":9.0}\n')
    listing = vidx("watch", "list", str(root))
    assert "fence: a person climbs the fence [gate]" in listing.stdout
    assert "http://127.0.0.1:9/hooks [1 dead (connect error: refused)]" in listing.stdout


def test_no_broken_pipe_traceback_when_the_reader_goes_away(tmp_path):
    root = tmp_path / "idx"
    for n in range(3):
        assert vidx("watch", "add", str(root), f"condition {n}").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "actors.cli", "watch", "list", str(root)], cwd=REPO,
                            env=driver_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head -0` does, before vidx writes a line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_BROKEN_PIPE
    assert err.decode() == ""
