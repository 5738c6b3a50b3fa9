"""What the CLI, logs and the manifest show of a source URI: never its password or token."""

from indexer.media.source import SourceError, default_stream_id, parse_source
from indexer.redaction import redact_uri
from indexer.settings import ReaderOptions


def test_source_errors_redact_the_uri_and_urls_quoted_in_the_reason():
    uri = "rtsp://admin:pw0rd@cam.local/live?token=t0k"
    error = SourceError(uri, f"cannot open: Connection refused: '{uri}'")
    assert "pw0rd" not in str(error) and "t0k" not in str(error) and "t0k" not in error.reason
    assert str(error).startswith("rtsp://admin:***@cam.local/live?token=***: cannot open")
    assert error.uri == uri  # kept for reconnects


def test_default_stream_ids_never_hold_credentials():
    sid = default_stream_id("rtsp://admin:pw0rd@10.0.0.5:554")
    assert "pw0rd" not in sid and "admin" not in sid and sid.startswith("10.0.0.5-")
    # a new password keeps the stream id (the hash is of the URI as shown)
    assert sid == default_stream_id("rtsp://admin:other@10.0.0.5:554")
    assert parse_source("rtsp://u:p@cam/live/main").stream_id.startswith("main-")


def test_redaction_is_idempotent_and_leaves_paths_alone():
    shown = redact_uri("http://u:p@h/v.m3u8?sig=abc&x=1")
    assert shown == "http://u:***@h/v.m3u8?sig=***&x=1" and redact_uri(shown) == shown
    assert redact_uri("/data/cam 1.mp4") == "/data/cam 1.mp4"


def test_reader_options_refuse_non_finite_and_absurd_values():
    import pytest
    from pydantic import ValidationError

    for fps in (float("inf"), float("nan"), 61.0, 0.0):
        with pytest.raises(ValidationError, match="fps"):
            ReaderOptions(fps=fps)
    with pytest.raises(ValidationError, match="finite"):
        ReaderOptions(read_timeout_s=float("inf"))
    assert ReaderOptions(fps=60).fps == 60


def test_sampling_above_the_source_frame_rate_warns(tmp_path, caplog):
    from indexer.media.reader import SourceReader
    from tests.mediagen import make_video

    video = make_video(tmp_path / "v.mp4", duration_s=1.0, fps=10, size=(64, 48))
    for fps, warns in ((30.0, True), (10.0, False)):
        caplog.clear()
        reader = SourceReader(parse_source(str(video)), ReaderOptions(fps=fps))
        reader.open()
        reader.close()
        assert ("above the source's 10 fps" in caplog.text) == warns
