#!/usr/bin/env bash
# What the tests need from outside PyPI, installed from Debian's packages when missing (sudo when
# not root): the ffmpeg and ffprobe CLIs (they publish HLS, MPEG-TS over UDP and RTMP on 127.0.0.1),
# GStreamer's RTSP server driven by the system python3 (python3-gi; tests/rtsp_server.py), openssl
# (a self-signed certificate for the https tests), and headless Chromium with its driver (the web
# page of `vidx serve`). Does nothing when all are there. Debian 12 or Ubuntu 22.04+.
set -euo pipefail

missing=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing+=(ffmpeg)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" \
    2>/dev/null || missing+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
                             gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "test-deps: installing ${missing[*]} (apt-get)" >&2
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
