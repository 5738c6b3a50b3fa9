"""Which actors a cluster pins to the driver's node, what an encoder asks a node for, and the
one address form that cannot work (Ray Client). The cluster itself: tests/actors/test_cluster.py."""

import pytest

from actors.ingest import run_ingest
from actors.placement import encoder_demand, reads_on_driver_node
from indexer.media.source import parse_source
from indexer.settings import EncoderSettings, Settings
from indexer.store.root import IndexRoot


@pytest.mark.parametrize(("uri", "on_driver"), [
    ("/data/talk.mp4", True),                       # a local file exists on the driver's node only
    ("rtsp://10.0.0.5/stream", True),               # live: fed by the driver's capture, recorded under the root
    ("udp://127.0.0.1:5000", True),
    ("https://example.com/cam/live.m3u8", True),    # HLS may be live
    ("https://example.com/talk.mp4", False),        # a file over the network: any node
])
def test_readers_of_local_files_and_live_sources_run_on_the_driver_node(uri, on_driver):
    assert reads_on_driver_node(parse_source(uri)) is on_driver


def test_an_encoder_asks_for_its_cpus_gpus_and_custom_resources():
    assert encoder_demand(EncoderSettings()) == {"CPU": 1.0}
    assert encoder_demand(EncoderSettings(num_gpus=1, num_cpus=2, resources={"gpu_node": 1})) == \
        {"CPU": 2.0, "GPU": 1.0, "gpu_node": 1.0}


def test_ray_client_addresses_are_refused_before_anything_starts(tmp_path):
    settings = Settings.model_validate({"model": {"model_dir": str(tmp_path / "none")}})
    with pytest.raises(ValueError, match=r"^--address ray://head:10001: Ray Client \(ray://\) would run the writer"):
        run_ingest([str(tmp_path / "clip.mp4")], IndexRoot.at(tmp_path / "index"), settings, address="ray://head:10001")
    assert not (tmp_path / "index").exists()
