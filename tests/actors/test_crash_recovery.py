"""SIGKILL the writer, an encoder and the driver of an ingest job on a `ray start` cluster on
localhost, rerun it, and prove every sampled (stream, pts) is in the timeline exactly once."""

import os
import signal
import subprocess
import sys

from indexer.store.root import IndexRoot
from tests.actors.jobs import REPO, committed, kill_tree, ray_cluster, start_ingest, wait_for, write_config
from tests.actors.test_ingest import FPS, check_index, settings  # noqa: F401  (fixture)
from tests.mediagen import make_video


def test_sigkill_of_writer_encoder_and_driver_loses_and_duplicates_nothing(tmp_path, settings):  # noqa: F811
    sources = {f"s{i}": make_video(tmp_path / f"s{i}.mp4", duration_s=40, fps=FPS, gop=FPS) for i in range(2)}
    config = write_config(settings, tmp_path / "config.yaml", reader={"fps": 4.0},
                          ingest={"batch_frames": 4, "max_inflight_batches": 2})
    root = tmp_path / "index"
    with ray_cluster(num_cpus=2) as cluster:
        args = [*[f"{k}={v}" for k, v in sources.items()], "--index", str(root), "--config", str(config),
                "--address", cluster.address]
        driver = start_ingest(args, tmp_path / "driver.log", env=cluster.env)
        try:
            wait_for(lambda: committed(root) > 10, 120, "first commits", driver, tmp_path / "driver.log")
            for actor in ("ray::WriterActor", "ray::EncoderActor"):
                os.kill(cluster.pids(actor)[0], signal.SIGKILL)  # this cluster's actor, no one else's
                before = committed(root)
                wait_for(lambda b=before: committed(root) > b + 8, 120, f"progress after killing {actor}", driver,
                         tmp_path / "driver.log")
        finally:
            kill_tree(driver)  # SIGKILL
        killed_at = committed(root)
        assert killed_at < 2 * 160, "the kills must happen mid-ingest"
        rerun = subprocess.run([sys.executable, "-m", "actors.ingest", *args, "--no-progress"], cwd=REPO,
                               env=cluster.env, capture_output=True, text=True, timeout=300, check=False)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    index = check_index(IndexRoot.at(root), {"s0": 160, "s1": 160})
    assert all(s.complete for s in index.manifest.streams.values())
