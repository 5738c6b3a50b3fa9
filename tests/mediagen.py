"""Real media files on disk for tests, made with the ffmpeg CLI and PyAV.

Every frame carries its own truth: frame ``n`` shows ``n`` as a grid of big black/white
blocks (16 data bits interleaved with a 16-bit CRC), so a test can read the frame number
back from any decoded image of the whole frame, even a 160-pixel JPEG thumbnail or a
stretched 224x224 resize (:func:`read_frame_number`; cropping is not supported).

Files written by :func:`make_video` start at pts 0 and frame ``n`` has pts ``n / fps``
exactly. The bad-input helpers make files that a robust reader must reject or survive.
"""

from __future__ import annotations

import itertools
import json
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COLS",
    "DATA_BITS",
    "MAX_FRAME_NUMBER",
    "ROWS",
    "ffmpeg_bin",
    "ffprobe",
    "frame_pattern",
    "make_audio_gap_video",
    "make_audio_only",
    "make_codec_change_ts",
    "make_corrupt",
    "make_damaged",
    "make_hls_vod",
    "make_non_video",
    "make_resolution_change_ts",
    "make_spliced_ts",
    "make_ts_with_lost_packets",
    "make_truncated",
    "make_unsupported_codec",
    "make_vfr_video",
    "make_video",
    "make_video_with_subtitles",
    "make_zero_byte",
    "png_bomb",
    "probe_frame_times",
    "read_frame_number",
]

# ---------------------------------------------------------------------------------------------
# The frame-number pattern
# ---------------------------------------------------------------------------------------------

COLS, ROWS = 8, 4
DATA_BITS = 16
CHECK_BITS = COLS * ROWS - DATA_BITS  # 16: CRC-16
MAX_FRAME_NUMBER = (1 << DATA_BITS) - 1
_CRC_XOR = 0x5AA5  # so that an all-black or all-white frame is not a valid code
_BLACK, _WHITE = 0, 255
_LOW, _HIGH = 80.0, 176.0  # a block centre with a mean luma between these is unreadable


def _crc16(value: int) -> int:
    """CRC-16/CCITT of the 16-bit ``value``, xor-ed with a constant."""
    crc = 0xFFFF
    for byte in (value >> 8, value & 0xFF):
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc ^ _CRC_XOR


def _bits(n: int) -> list[int]:
    """Row-major block bits: every row alternates data and check bits (MSB first), so that a
    frame whose lower or upper rows were concealed from another frame fails the check."""
    data, check = n, _crc16(n)
    bits = []
    for i in range(COLS * ROWS):
        k = i // 2  # index among the data (even i) or check (odd i) bits
        source, width = (check, CHECK_BITS) if i % 2 else (data, DATA_BITS)
        bits.append((source >> (width - 1 - k)) & 1)
    return bits


def _unbits(bits: list[int]) -> tuple[int, int]:
    data = check = 0
    for i, b in enumerate(bits):
        if i % 2:
            check = (check << 1) | b
        else:
            data = (data << 1) | b
    return data, check


def frame_pattern(n: int, width: int, height: int) -> np.ndarray:
    """The ``height x width x 3`` uint8 RGB image of frame number ``n``.

    A ``COLS x ROWS`` (8 x 4) grid of blocks fills the frame, white for 1 and black for 0:
    16 bits of ``n`` interleaved with its 16-bit CRC (see ``_bits``).
    """
    if not 0 <= n <= MAX_FRAME_NUMBER:
        raise ValueError(f"frame number {n} out of range 0..{MAX_FRAME_NUMBER}")
    grid = np.array(_bits(n), dtype=np.uint8).reshape(ROWS, COLS) * (_WHITE - _BLACK) + _BLACK
    ys = np.minimum(np.arange(height) * ROWS // height, ROWS - 1)
    xs = np.minimum(np.arange(width) * COLS // width, COLS - 1)
    img = grid[ys[:, None], xs[None, :]]
    return np.repeat(img[:, :, None], 3, axis=2)


def _centre(i: int, count: int, length: int) -> tuple[int, int]:
    """Pixel range of the central half of block ``i`` of ``count`` along ``length`` pixels."""
    lo = int((i + 0.25) * length / count)
    return lo, max(int((i + 0.75) * length / count), lo + 1)


def read_frame_number(rgb: np.ndarray) -> int:
    """Decode the frame number from an image of the whole frame (any size, RGB or grey).

    Samples the central half of each block in relative coordinates, so resizing, stretching
    and lossy compression are fine; cropping is not. Raises ``ValueError`` when a block is
    neither clearly black nor clearly white or the CRC does not match.
    """
    img = np.asarray(rgb, dtype=np.float32)
    if img.ndim == 3:
        img = img[:, :, :3].mean(axis=2)
    if img.ndim != 2:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {np.shape(rgb)}")
    h, w = img.shape
    if h < 2 * ROWS or w < 2 * COLS:
        raise ValueError(f"image {w}x{h} too small to hold a {COLS}x{ROWS} code")
    bits = []
    for r in range(ROWS):
        y0, y1 = _centre(r, ROWS, h)
        for c in range(COLS):
            x0, x1 = _centre(c, COLS, w)
            mean = float(img[y0:y1, x0:x1].mean())
            if _LOW < mean < _HIGH:
                raise ValueError(f"block ({r}, {c}) is ambiguous (mean luma {mean:.0f})")
            bits.append(int(mean >= 128))
    n, check = _unbits(bits)
    if _crc16(n) != check:
        raise ValueError(f"frame code check failed (read {n}, crc {check:#06x} != {_crc16(n):#06x})")
    return n


# ---------------------------------------------------------------------------------------------
# ffmpeg / ffprobe
# ---------------------------------------------------------------------------------------------


def ffmpeg_bin(name: str = "ffmpeg") -> str:
    """Path of the ``ffmpeg``/``ffprobe`` CLI; raises (tests must fail, not skip) if absent."""
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` not found on PATH (apt-get install ffmpeg)")
    return found


def _run(cmd: Sequence[str], *, timeout: float = 120.0) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace")


def ffprobe(path: str | Path, *args: str) -> dict[str, Any]:
    """``ffprobe -of json`` of ``path`` with the given extra arguments (e.g. ``-show_streams``)."""
    out = _run([ffmpeg_bin("ffprobe"), "-v", "error", "-of", "json", *args, str(path)])
    return json.loads(out)


def probe_frame_times(path: str | Path, stream: str = "v:0") -> list[float]:
    """Presentation times (seconds) of every packet of ``stream``, in presentation order."""
    info = ffprobe(path, "-select_streams", stream, "-show_entries", "packet=pts_time")
    return sorted(float(p["pts_time"]) for p in info["packets"] if p.get("pts_time") not in (None, "N/A"))


def _rate(fps: float | Fraction) -> str:
    fr = Fraction(fps).limit_denominator(1001)
    return f"{fr.numerator}/{fr.denominator}"


def _codec_args(codec: str, gop: int | None, suffix: str) -> list[str]:
    """Fast, deterministic settings per encoder; ``gop`` makes keyframes exactly every N frames."""
    if codec == "libx264":
        args = ["-preset", "veryfast"]
        if suffix == ".ts":
            # MPEG-TS cannot carry the negative dts of B-frames without shifting every
            # timestamp; without B-frames frame 0 keeps pts 0.
            args += ["-bf", "0"]
        if gop:
            args += ["-g", str(gop), "-keyint_min", str(gop)]
            args += ["-x264-params", f"scenecut=0:keyint={gop}:min-keyint={gop}"]
        return args
    if codec == "libx265":
        params = "log-level=error"
        if gop:
            params += f":keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0"
        tag = ["-tag:v", "hvc1"] if suffix in (".mp4", ".mov") else []  # playable by Apple players
        return ["-preset", "ultrafast", "-x265-params", params, *tag]
    if codec == "libvpx-vp9":
        args = ["-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1", "-b:v", "500k"]
        args += ["-auto-alt-ref", "0", "-lag-in-frames", "0"]
        return args + (["-g", str(gop), "-keyint_min", str(gop)] if gop else [])
    if codec == "mpeg2video":
        args = ["-q:v", "3", "-bf", "0", "-flags", "+low_delay"]
        return args + (["-g", str(gop), "-sc_threshold", "1000000000"] if gop else [])
    return ["-g", str(gop)] if gop else []


def _container_args(suffix: str) -> list[str]:
    if suffix == ".ts":
        return ["-muxdelay", "0", "-muxpreload", "0", "-f", "mpegts"]
    return []


def make_video(
    path: str | Path,
    *,
    duration_s: float = 10.0,
    fps: float | Fraction = 25,
    size: tuple[int, int] = (320, 240),
    codec: str = "libx264",
    gop: int | None = None,
    pix_fmt: str = "yuv420p",
    extra_args: Sequence[str] = (),
) -> Path:
    """Encode frames ``0..N-1`` (``N = round(duration_s * fps)``) of the pattern to ``path``.

    Frame ``n`` has pts ``n / fps`` exactly and the first pts is 0. The container follows the
    suffix; tested: ``libx264``/.mp4 (B-frames, moov at the end), ``libx265``/.mkv,
    ``libvpx-vp9``/.webm, ``mpeg2video``/.ts and ``libx264``/.ts (no B-frames in TS).
    ``gop`` sets an exact keyframe interval in frames (scene-cut detection off).
    """
    path = Path(path)
    width, height = size
    count = round(duration_s * float(fps))
    cmd = [
        ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", _rate(fps), "-i", "pipe:0",
        "-an", "-c:v", codec, "-pix_fmt", pix_fmt,
        *_codec_args(codec, gop, path.suffix.lower()), *_container_args(path.suffix.lower()), *extra_args, str(path),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        assert proc.stdin is not None
        try:
            for n in range(count):
                proc.stdin.write(frame_pattern(n, width, height).tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        finally:
            rc = proc.wait(timeout=300)
        if rc != 0:
            err.seek(0)
            raise RuntimeError(f"ffmpeg failed ({rc}) writing {path}: {err.read().decode(errors='replace')[-2000:]}")
    return path


def make_vfr_video(path: str | Path, times_s: Sequence[float], size: tuple[int, int] = (320, 240)) -> list[float]:
    """A variable-frame-rate H.264 file (.mkv or .mp4) where frame ``i`` shows pattern ``i``.

    Frame ``i`` has pts ``times_s[i]`` rounded to the millisecond (time base 1/1000). Returns
    those times, i.e. ``returned[n]`` is the true time of the frame showing ``n``.
    """
    import av

    pts_ms = [round(t * 1000) for t in times_s]
    if any(b <= a for a, b in itertools.pairwise(pts_ms)) or (pts_ms and pts_ms[0] < 0):
        raise ValueError("times_s must be non-negative and strictly increasing at ms precision")
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"preset": "veryfast"}
        for i, ms in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, width, height), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return [ms / 1000 for ms in pts_ms]


def _srt_time(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def make_video_with_subtitles(
    path: str | Path,
    duration_s: float,
    cues: Sequence[tuple[float, float, str]],
    *,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
) -> Path:
    """An MKV with the H.264 pattern video (pts ``n / fps``) and a SubRip text track of ``cues``.

    Each cue is ``(start_s, end_s, text)``; times are kept to the millisecond.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "video.mkv", duration_s=duration_s, fps=fps, size=size)
        srt = Path(tmp) / "subs.srt"
        blocks = [f"{i}\n{_srt_time(a)} --> {_srt_time(b)}\n{text}\n" for i, (a, b, text) in enumerate(cues, 1)]
        srt.write_text("\n".join(blocks), encoding="utf-8")
        _run([
            ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-i", str(video), "-i", str(srt), "-map", "0:v", "-map", "1:s",
            "-c:v", "copy", "-c:s", "srt", "-metadata:s:s:0", "language=eng", str(path),
        ])  # fmt: skip
    return path


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def make_zero_byte(path: str | Path) -> Path:
    """An empty file (PyAV: ``av.open`` raises ``av.error.InvalidDataError``)."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_truncated(src: str | Path, path: str | Path, keep_fraction: float = 0.4) -> Path:
    """The first ``keep_fraction`` of ``src``, copied to ``path``; the result depends on ``src``:

    * an MP4 from :func:`make_video` has its ``moov`` box at the end, so the truncated file
      has no index: ``av.open`` raises ``av.error.InvalidDataError`` (FFmpeg logs "moov atom
      not found"); an MP4 made with ``extra_args=["-movflags", "+faststart"]`` would instead
      stay readable up to the cut;
    * an MPEG-TS is cut in the middle of a 188-byte packet: it opens and decodes about
      ``keep_fraction`` of its frames, then ends without an error (a cut-off recording).
    """
    data = Path(src).read_bytes()
    keep = int(len(data) * keep_fraction)
    if Path(src).suffix.lower() == ".ts" and keep % 188 == 0:
        keep -= 94
    path = Path(path)
    path.write_bytes(data[:keep])
    return path


def make_corrupt(src: str | Path, path: str | Path, seed: int = 0) -> Path:
    """``src`` with its middle third overwritten by seeded random bytes.

    Meant for H.264 in .ts or .mkv; what PyAV 18 then does (no exception in either case):

    * .ts: the first third decodes, the middle gives a few garbled frames (their pattern
      raises ``ValueError``) or none, decoding resumes at the first keyframe after the damage;
      use a short ``gop`` in ``src`` (e.g. ``gop=fps``) or the rest stays garbled;
    * .mkv: the Matroska demuxer does not resync: iteration just ends after the first third.

    A decoder may conceal damage by showing an earlier picture: such a frame reads back as
    that earlier frame's number although its pts is later.
    """
    data = bytearray(Path(src).read_bytes())
    a, b = len(data) // 3, 2 * len(data) // 3
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path = Path(path)
    path.write_bytes(bytes(data))
    return path


def make_non_video(path: str | Path) -> Path:
    """A text file (give it a video suffix such as ``.mp4``)."""
    path = Path(path)
    path.write_text("this is not a video\n" * 50, encoding="utf-8")
    return path


def make_audio_only(path: str | Path, duration_s: float = 2.0) -> Path:
    """An audio-only file (e.g. ``.wav``): a 440 Hz sine, no video stream."""
    path = Path(path)
    _run([
        ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"sine=frequency=440:duration={duration_s}", str(path),
    ])  # fmt: skip
    return path


def make_unsupported_codec(path: str | Path, duration_s: float = 2.0) -> Path:
    """An AVI whose video stream has the unknown FourCC ``QQQQ`` (it holds H.264 data).

    FFmpeg opens it and sees a video stream of codec ``none`` (ffprobe: ``codec_tag_string``
    ``QQQQ``). PyAV 18: ``av.open`` works, ``stream.codec_context is None`` (so no
    ``stream.width`` etc.), ``container.decode(stream)`` raises
    ``av.error.DecoderNotFoundError`` ("Decoder not found"); demuxing packets still works.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        src = make_video(Path(tmp) / "src.avi", duration_s=duration_s, extra_args=["-bf", "0"])
        data = bytearray(src.read_bytes())
    strh, strf = data.find(b"strh"), data.find(b"strf")
    if strh < 0 or strf < 0:
        raise RuntimeError("AVI stream headers not found")
    # strh: tag, size, fccType, fccHandler; strf (BITMAPINFOHEADER): tag, size, biSize,
    # biWidth, biHeight, biPlanes, biBitCount, biCompression.
    for offset in (strh + 12, strf + 24):
        if bytes(data[offset : offset + 4]).upper() not in (b"H264", b"X264", b"AVC1"):
            raise RuntimeError(f"unexpected FourCC {bytes(data[offset:offset + 4])!r} at {offset}")
        data[offset : offset + 4] = b"QQQQ"
    path.write_bytes(bytes(data))
    return path


def png_bomb(side: int) -> bytes:
    """A real PNG of side x side black 1-bit pixels (a decompression bomb): under 1 MiB for
    side 30000, which decodes to 900 million pixels (2.7 GB as RGB). Written row by row, never
    held whole."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # the filter byte, then the row's bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.compress(row * (side % 1000))
    idat += packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def make_damaged(src: str | Path, path: str | Path, at_fraction: float, length: int = 4000,
                 seed: int = 0) -> tuple[int, int]:
    """``src`` with ``length`` seeded random bytes written at ``at_fraction`` of its size;
    returns the damaged byte range ``[start, end)`` (see :func:`damaged_span`)."""
    data = bytearray(Path(src).read_bytes())
    start = int(len(data) * at_fraction)
    end = min(len(data), start + length)
    data[start:end] = np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    Path(path).write_bytes(bytes(data))
    return start, end


def damaged_span(src: str | Path, start: int, end: int) -> tuple[float, float | None]:
    """For a file without B-frames: (pts of the first video frame whose bytes lie in
    ``[start, end)``, pts of the first keyframe wholly after it, or None) from ffprobe of the
    intact ``src``. A packet's bytes run from its position to the next packet's."""
    info = ffprobe(src, "-select_streams", "v:0", "-show_entries", "packet=pts_time,pos,size,flags")
    packets = sorted((int(p["pos"]), int(p["size"]), float(p["pts_time"]), "K" in p["flags"])
                     for p in info["packets"] if p.get("pos") not in (None, "N/A"))
    first_bad = None
    for (pos, size, pts, _), following in zip(packets, [*packets[1:], None]):
        stop = following[0] if following and Path(src).suffix == ".ts" else pos + size
        if pos < end and stop > start:
            first_bad = pts if first_bad is None else min(first_bad, pts)
    if first_bad is None:
        raise ValueError(f"no video packet in bytes {start}-{end} of {src}")
    after = [pts for pos, _, pts, key in packets if key and pos >= end and pts > first_bad]
    return first_bad, (min(after) if after else None)


def _remux_ts(src: Path, path: Path, *, start_s: float | None = None, duration_s: float | None = None,
              offset_s: float = 0.0, discontinuity: bool = False, first_pid: int | None = None) -> Path:
    """A stream copy of part of an MPEG-TS: from ``start_s`` (a keyframe; times then restart at 0)
    for ``duration_s``, timestamps shifted by ``offset_s``; ``discontinuity`` sets the MPEG-TS
    discontinuity_indicator on the first packets; ``first_pid`` moves the video to another PID."""
    _run([
        ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        *(["-ss", f"{start_s}"] if start_s is not None else []), "-i", str(src),
        *(["-t", f"{duration_s}"] if duration_s is not None else []), "-map", "0", "-c", "copy",
        "-output_ts_offset", f"{offset_s}", "-muxdelay", "0", "-muxpreload", "0",
        *(["-mpegts_flags", "+initial_discontinuity"] if discontinuity else []),
        *(["-mpegts_start_pid", str(first_pid)] if first_pid else []), "-f", "mpegts", str(path),
    ])  # fmt: skip
    return path


def make_spliced_ts(path: str | Path, *, duration_s: float = 12.0, fps: int = 25, splice_s: float = 6.0,
                    resume_pts_s: float = 990.0) -> Path:
    """Frames ``0..N-1`` in MPEG-TS (H.264, keyframe every second) spliced at ``splice_s``:
    frames before it have pts ``n / fps``, the frame at the splice and those after it continue at
    ``resume_pts_s`` (ahead: a spliced broadcast capture; behind, e.g. 0: an encoder or camera
    clock reset). The second part starts with the MPEG-TS discontinuity_indicator set, as a
    splicer marks it; the two parts are byte-concatenated."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        whole = make_video(Path(tmp) / "whole.ts", duration_s=duration_s, fps=fps, gop=fps)
        first = _remux_ts(whole, Path(tmp) / "a.ts", duration_s=splice_s)
        second = _remux_ts(whole, Path(tmp) / "b.ts", start_s=splice_s, offset_s=resume_pts_s, discontinuity=True)
        path.write_bytes(first.read_bytes() + second.read_bytes())
    return path


TS_PACKET = 188


def make_ts_with_lost_packets(path: str | Path, *, duration_s: float = 12.0, fps: int = 25, frame: int = 160,
                              lost: int = 2, from_start: bool = False) -> Path:
    """H.264 in MPEG-TS (frames ``0..N-1`` at pts ``n / fps``, a keyframe every second, no
    B-frames: one PES packet per frame, in display order) with ``lost`` 188-byte transport
    packets of the video cut out, as a lossy network drops them: the packets just after the start
    of frame ``frame``'s PES packet, or (``from_start``) from its first one on. The picture has
    light noise, so that a frame spans several transport packets (the bare pattern needs one)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_video(Path(tmp) / "whole.ts", duration_s=duration_s, fps=fps, gop=fps,
                          extra_args=["-vf", "noise=alls=10:allf=t+u"]).read_bytes()
    packets = [data[i:i + TS_PACKET] for i in range(0, len(data), TS_PACKET)]
    assert all(p[0] == 0x47 for p in packets), "not 188-byte MPEG-TS packets"
    pid = [((p[1] & 0x1F) << 8) | p[2] for p in packets]
    video_pid = 0x100  # FFmpeg's first elementary stream
    starts = [i for i, p in enumerate(packets) if pid[i] == video_pid and p[1] & 0x40]  # payload_unit_start
    assert len(starts) == round(duration_s * fps), (len(starts), "PES packets: one per frame expected")
    first = starts[frame] if from_start else starts[frame] + 1
    ours = [i for i in range(first, len(packets)) if pid[i] == video_pid][:lost]
    assert from_start or ours[-1] < starts[frame + 1], f"frame {frame}'s PES packet is too short to lose {lost}"
    path.write_bytes(b"".join(p for i, p in enumerate(packets) if i not in set(ours)))
    return path


def make_hls_vod(directory: str | Path, *, duration_s: float = 12.0, fps: int = 25, splice_s: float | None = 6.0,
                 resume_pts_s: float = 990.0, segment_s: int = 2, first_pts_s: float = 0.0) -> Path:
    """A complete HLS playlist ``directory/vod.m3u8`` of ``segment_s`` MPEG-TS segments, frames
    ``0..N-1`` with pts ``first_pts_s + n / fps`` until ``splice_s``, then from ``resume_pts_s`` on
    after an ``#EXT-X-DISCONTINUITY`` (as :func:`make_spliced_ts`; ``splice_s=None``: no splice).
    Returns the playlist's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        whole = make_video(Path(tmp) / "whole.ts", duration_s=duration_s, fps=fps, gop=fps)
        parts = [_remux_ts(whole, Path(tmp) / "a.ts", duration_s=splice_s, offset_s=first_pts_s)]
        if splice_s is not None:
            parts.append(_remux_ts(whole, Path(tmp) / "b.ts", start_s=splice_s, offset_s=resume_pts_s))
        entries: list[list[str]] = []
        for name, part in zip("ab", parts):
            _run([
                ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-copyts", "-i", str(part),
                "-c", "copy", "-muxdelay", "0", "-muxpreload", "0", "-f", "hls", "-hls_time", str(segment_s),
                "-hls_playlist_type", "vod", "-hls_segment_filename", str(directory / f"{name}%03d.ts"),
                str(Path(tmp) / f"{name}.m3u8"),
            ])  # fmt: skip
            lines = (Path(tmp) / f"{name}.m3u8").read_text().splitlines()
            entries.append([line for line in lines if line.startswith("#EXTINF") or line.endswith(".ts")])
    target = max(segment_s, 1)
    playlist = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target + 1}", "#EXT-X-MEDIA-SEQUENCE:0",
                "#EXT-X-PLAYLIST-TYPE:VOD", *entries[0]]
    for entry in entries[1:]:
        playlist += ["#EXT-X-DISCONTINUITY", *entry]
    playlist.append("#EXT-X-ENDLIST")
    path = directory / "vod.m3u8"
    path.write_text("\n".join(playlist) + "\n")
    return path


def make_resolution_change_ts(path: str | Path, *, duration_s: float = 12.0, fps: int = 25, change_s: float = 6.0,
                              sizes: tuple[tuple[int, int], tuple[int, int]] = ((320, 240), (640, 360))) -> Path:
    """H.264 in MPEG-TS, frames ``0..N-1`` at pts ``n / fps``, ``sizes[0]`` before ``change_s``
    and ``sizes[1]`` from it on (new SPS at a keyframe, same PID, no timestamp jump)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        small = make_video(Path(tmp) / "small.ts", duration_s=duration_s, fps=fps, gop=fps, size=sizes[0])
        large = make_video(Path(tmp) / "large.ts", duration_s=duration_s, fps=fps, gop=fps, size=sizes[1])
        first = _remux_ts(small, Path(tmp) / "a.ts", duration_s=change_s)
        second = _remux_ts(large, Path(tmp) / "b.ts", start_s=change_s, offset_s=change_s, discontinuity=True)
        path.write_bytes(first.read_bytes() + second.read_bytes())
    return path


def make_codec_change_ts(path: str | Path, *, duration_s: float = 12.0, fps: int = 25, change_s: float = 6.0) -> Path:
    """MPEG-TS, frames ``0..N-1`` at pts ``n / fps``: H.264 before ``change_s``, MPEG-2 video
    from it on in a new elementary stream (another PID, as a broadcaster's program change)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        h264 = make_video(Path(tmp) / "h264.ts", duration_s=duration_s, fps=fps, gop=fps)
        mpeg2 = make_video(Path(tmp) / "mpeg2.ts", duration_s=duration_s, fps=fps, gop=fps, codec="mpeg2video")
        first = _remux_ts(h264, Path(tmp) / "a.ts", duration_s=change_s)
        second = _remux_ts(mpeg2, Path(tmp) / "b.ts", start_s=change_s, offset_s=change_s, first_pid=0x200,
                            discontinuity=True)
        path.write_bytes(first.read_bytes() + second.read_bytes())
    return path


def make_audio_gap_video(path: str | Path, *, duration_s: float = 12.0, fps: int = 25,
                         hole: tuple[float, float] = (4.0, 8.0)) -> Path:
    """Frames ``0..N-1`` at pts ``n / fps`` with a 440 Hz tone for the whole length, but no
    video frame with ``hole[0] <= pts < hole[1]``: a stretch of audio only (container by suffix)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        whole = make_video(Path(tmp) / "whole.mkv", duration_s=duration_s, fps=fps, gop=fps)
        a, b = hole
        _run([
            ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(whole),
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={duration_s}", "-map", "0:v", "-map", "1:a",
            "-vf", f"select='lt(t,{a})+gte(t,{b})'", "-fps_mode", "passthrough",
            "-c:v", "libx264", *_codec_args("libx264", fps, path.suffix.lower()), "-c:a", "aac",
            *_container_args(path.suffix.lower()), str(path),
        ])  # fmt: skip
    return path
