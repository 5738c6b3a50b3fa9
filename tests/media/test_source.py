"""What a source's URI may show: `redact_uri` / `redact_text` (the API, logs and the CLI use them)."""

from __future__ import annotations

import pytest

from indexer.redaction import redact_query, redact_text, redact_uri


@pytest.mark.parametrize(("uri", "shown"), [
    ("rtsp://admin:secret@10.0.0.7:554/live?token=abc&ch=1", "rtsp://admin:***@10.0.0.7:554/live?token=***&ch=1"),
    ("rtsp://admin:p@ss@cam/x", "rtsp://admin:***@cam/x"),                       # an unescaped @ in the password
    ("https://ghp_0123@github.com/x.mp4", "https://***@github.com/x.mp4"),      # a bare user name: often a token
    ("https://bucket.example/v.mp4?X-Amz-Credential=c&X-Amz-Signature=s&v=2",
     "https://bucket.example/v.mp4?X-Amz-Credential=***&X-Amz-Signature=***&v=2"),
    ("https://h/v.mp4?api%5Fkey=k&sig=s&password=p&access_token=t&auth=a",
     "https://h/v.mp4?api%5Fkey=***&sig=***&password=***&access_token=***&auth=***"),
    ("https://h/v.mp4?t=10&fmt=mp4", "https://h/v.mp4?t=10&fmt=mp4"),           # nothing secret: unchanged
    ("udp://0.0.0.0:5000?fifo_size=1", "udp://0.0.0.0:5000?fifo_size=1"),
    ("/data/cams/gate.mp4", "/data/cams/gate.mp4"),                             # a path: unchanged
    ("C:\\videos\\a.mp4", "C:\\videos\\a.mp4"),
])
def test_redact_uri_hides_passwords_tokens_and_signed_parameters(uri, shown):
    assert redact_uri(uri) == shown


def test_redact_text_redacts_every_url_in_a_message():
    message = "rtsp://admin:hunter2@cam/live: connection refused (tried 'http://u:pw@proxy:3128/?key=k')"
    assert redact_text(message) == ("rtsp://admin:***@cam/live: connection refused (tried "
                                    "'http://u:***@proxy:3128/?key=***')")
    assert redact_text("no url here: /data/a.mp4") == "no url here: /data/a.mp4"


def test_redact_query_keeps_the_order_and_the_plain_parameters():
    assert redact_query("after=3&token=T&limit=5") == "after=3&token=***&limit=5"
    assert redact_query("") == ""
