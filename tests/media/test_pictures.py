"""FilePictures: the picture decoded again at a sample's time is the very one the reader sampled
(real ffmpeg-made files, real PyAV), in any order asked, and a missing file is named."""

import shutil

import numpy as np
import pytest

from indexer.batches import SampledFrame
from indexer.media.pictures import FilePictures, PicturesUnavailable
from indexer.media.reader import SourceReader
from indexer.media.source import parse_source
from indexer.settings import ReaderOptions
from tests.mediagen import make_vfr_video, make_video, read_frame_number


def sampled(path, fps: float, keyframes_only: str = "never") -> list[SampledFrame]:
    reader = SourceReader(parse_source(str(path)), ReaderOptions(fps=fps, keyframes_only=keyframes_only))
    try:
        return [s for s in reader.samples() if isinstance(s, SampledFrame)]
    finally:
        reader.close()


@pytest.mark.parametrize("name, gop", [("bframes.mp4", 50), ("short-gop.ts", 12)])
def test_frames_at_sample_times_are_the_sampled_pictures(tmp_path, name, gop):
    path = make_video(tmp_path / name, duration_s=6.0, fps=25, size=(160, 120), gop=gop)
    samples = sampled(path, 2.0)
    pictures = FilePictures(path, short_side=224)
    order = [7, 0, 3, 11, 4, 5]  # backwards, far ahead, close ahead: seeks and decoding on
    images = pictures.frames_at([samples[i].pts_s for i in order])
    for i, image in zip(order, images):
        assert image.dtype == np.uint8 and image.shape == samples[i].image.shape
        assert np.array_equal(image, samples[i].image), f"sample {i} at {samples[i].pts_s} s"
        assert read_frame_number(image) == round(samples[i].pts_s * 25)


def test_a_reader_that_decoded_keyframes_only_sampled_the_same_pictures(tmp_path):
    path = make_video(tmp_path / "gop5.mp4", duration_s=4.0, fps=25, size=(160, 120), gop=5)
    samples = sampled(path, 5.0, keyframes_only="always")  # keyframes every 0.2 s: the reader skips the rest
    images = FilePictures(path, short_side=224).frames_at([s.pts_s for s in samples])
    assert len(samples) == 20
    for sample, image in zip(samples, images):
        assert np.array_equal(image, sample.image)


def test_variable_frame_rate_holds_pick_the_held_frame(tmp_path):
    path = tmp_path / "vfr.mkv"
    make_vfr_video(path, [0.0, 0.4, 2.7, 3.1, 5.0], size=(160, 120))
    samples = sampled(path, 1.0)
    images = FilePictures(path, short_side=224).frames_at([s.pts_s for s in samples])
    assert [s.pts_s for s in samples][:4] == [0.0, 0.4, 0.4, 2.7]  # a held frame stands for several samples
    for sample, image in zip(samples, images):
        assert np.array_equal(image, sample.image)


def test_a_moved_file_and_a_time_it_lacks_are_named(tmp_path):
    path = make_video(tmp_path / "v.mp4", duration_s=2.0, fps=25, size=(160, 120))
    pictures = FilePictures(path, short_side=112)
    with pytest.raises(PicturesUnavailable, match="no frame at 0.510000 s"):
        pictures.frames_at([0.51])  # between two frames: not a frame the reader could have sampled
    shutil.move(path, tmp_path / "elsewhere.mp4")
    with pytest.raises(PicturesUnavailable, match=r"v\.mp4: the source file is gone \(moved or deleted\)"):
        pictures.frames_at([0.0])
