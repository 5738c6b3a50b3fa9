"""Ingestion and monitoring on a Ray cluster of two nodes, as the README's "Running on a cluster"
says to run them: a head (`{"index_node": 1}`, the driver's node, which holds the index root and
the local files) and a worker (`{"worker_node": 1}`), each its own `ray start --block` on this
machine. The worker runs in a mount namespace of its own with an empty tmpfs over the folder that
holds the sources and the index roots (`ray_node(hidden=...)`), as a node on another machine
does not see the driver's disk: an actor placed on the wrong node fails or writes where the
driver never looks. Encoders are sent to the worker (`encoder.resources`); the writer and the
readers of local files and live sources must run on the head (actors/placement.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.monitor.alerts import AlertLog
from indexer.query.engine import QueryEngine
from indexer.store import IndexReader
from indexer.store.root import IndexRoot
from tests.actors.jobs import (
    REPO,
    RayCluster,
    RayNode,
    committed,
    ray_cluster,
    ray_node,
    summary_frames,
    wait_for,
    write_config,
)
from tests.actors.test_ingest import FPS, check_index, settings  # noqa: F401  (fixture)
from tests.actors.test_ray_job import RUNTIME_ENV, _job_status
from tests.mediagen import make_video
from tests.monitor.scenes import make_scene_video
from tests.streams import hls_live, http_files

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# the GCS declares a node dead after about 5 s of failed health checks (Ray's default: 15-30 s); lenient
# enough that a live raylet on a busy machine does not miss them all
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
                   "RAY_health_check_failure_threshold": "4"}


class TwoNodes:
    def __init__(self, head: RayCluster, worker: RayNode, data: Path):
        self.head, self.worker, self.data = head, worker, data

    def run(self, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
        """A command of this environment (`vidx`, `ray`) with the cluster's environment."""
        return subprocess.run(list(args), cwd=REPO, env=self.head.env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[TwoNodes]:
    data = tmp_path_factory.mktemp("cluster-data")  # sources and index roots: the head's disk only
    with ray_cluster(num_cpus=2, dashboard=True, resources={"index_node": 1},
                     env={"RAY_JOB_STOP_WAIT_TIME_S": "30", **FAST_NODE_DEATH}) as head, \
            ray_node(head, num_cpus=1, resources={"worker_node": 1}, hidden=data) as worker:
        yield TwoNodes(head, worker, data)


class ActorPlaces:
    """The actor classes seen running on each node while a command runs (process titles)."""

    def __init__(self, cluster: TwoNodes):
        self.nodes = {"head": cluster.head.processes, "worker": cluster.worker.processes}
        self.seen: dict[str, set[str]] = {name: set() for name in self.nodes}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ActorPlaces:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(0.3):
            for name, processes in self.nodes.items():
                self.seen[name] |= {cmd.split()[0].split(".")[0].removeprefix("ray::")
                                    for cmd in processes().values() if cmd.startswith("ray::")}


def sees(cluster: TwoNodes, resource: str, path: Path) -> bool:
    """Whether a Ray task on the node with `resource` finds `path`."""
    probe = ("import os, sys, ray; ray.init(logging_level='ERROR'); "
             f"f = ray.remote(num_cpus=0, resources={{{resource!r}: 0.01}})(lambda p: os.path.exists(p)); "
             "print(ray.get(f.remote(sys.argv[1])))")
    done = subprocess.run([sys.executable, "-c", probe, str(path)], env=cluster.head.env | {
        "RAY_ADDRESS": cluster.head.address}, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True"


def test_ingest_and_ray_job_on_two_nodes(cluster, tmp_path, settings):  # noqa: F811
    """`vidx ingest --address` with a local file (read on the head) and an http file (read
    anywhere), then the same through `ray job submit`: every sample once, the encoders on the
    worker, the writer and the local file's reader on the head; the query side reads it."""
    config = write_config(settings, tmp_path / "config.yaml", encoder={"resources": {"worker_node": 1}})
    local = make_video(cluster.data / "local.mp4", duration_s=6, fps=FPS, codec="libx264")
    served = cluster.data / "www"
    served.mkdir()
    make_video(served / "web.mp4", duration_s=5, fps=FPS, codec="libx264")
    assert sees(cluster, "index_node", local) and not sees(cluster, "worker_node", local)

    root = cluster.data / "index"
    with http_files(served) as base, ActorPlaces(cluster) as places:
        done = cluster.run("vidx", "ingest", f"local={local}", f"web={base}/web.mp4", "--index", str(root),
                           "--config", str(config), "--address", cluster.head.address, "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert summary_frames(done.stdout) == {"local": 6, "web": 5}
    index = check_index(root, {"local": 6, "web": 5})  # every sample once, FAISS ids = frame ids, true pts
    assert all(entry.complete for entry in index.manifest.streams.values())
    assert "EncoderActor" in places.seen["worker"], places.seen
    assert {"WriterActor", "ReaderActor"} <= places.seen["head"], places.seen
    assert not {"WriterActor"} & places.seen["worker"], places.seen
    engine = QueryEngine.open(IndexRoot.at(root))
    try:
        hits = engine.search("a numbered test pattern", k=11)
    finally:
        engine.close()
    assert sorted((hit.stream_id, round(hit.pts_s)) for hit in hits) == \
        sorted([("local", s) for s in range(6)] + [("web", s) for s in range(5)])

    job_root = cluster.data / "job-index"
    with ActorPlaces(cluster) as places:
        job = cluster.run("ray", "job", "submit", "--address", cluster.head.dashboard_url, "--submission-id", "ingest",
                          "--working-dir", ".", "--runtime-env-json", RUNTIME_ENV, "--", "python", "-m",
                          "actors.ingest", f"local={local}", "--index", str(job_root), "--config", str(config),
                          "--no-progress")
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert _job_status(cluster.head.dashboard_url, "ingest") == "SUCCEEDED"
    assert summary_frames(job.stdout) == {"local": 6}
    assert check_index(job_root, {"local": 6}).manifest.streams["local"].complete
    assert "EncoderActor" in places.seen["worker"] and "WriterActor" in places.seen["head"], places.seen


def test_vidx_monitor_on_two_nodes_cuts_a_live_clip(cluster, tmp_path, settings):  # noqa: F811
    """`vidx monitor --address` on a live HLS stream with a black stretch: the alert opens and
    closes once, and its clip is cut from the ring the driver's capture keeps on the head."""
    config = write_config(settings, tmp_path / "config.yaml", encoder={"resources": {"worker_node": 1}},
                          monitor={"ring_segment_s": 1.0, "pre_roll_s": 1.0, "post_roll_s": 1.0,
                                   "clip_wait_s": 20.0, "poll_interval_s": 0.2})
    video = make_scene_video(cluster.data / "scenes.ts", 24.0, {"black": (8.0, 14.0)}, fps=10)
    root = cluster.data / "watched"
    added = cluster.run("vidx", "watch", "add", str(root), "--rule", "black", "--id", "dark")
    assert added.returncode == 0, added.stderr
    with hls_live(duration_s=24.0, fps=10, size=(160, 120), source=video) as (url, _), \
            ActorPlaces(cluster) as places:
        done = cluster.run("vidx", "monitor", f"cam={url}", "--index", str(root), "--config", str(config),
                           "--address", cluster.head.address, "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    (alert,) = AlertLog(IndexRoot.at(root)).alerts()
    assert alert.status == "closed" and abs(alert.start_s - 8.0) <= 2.0 and abs(alert.end_s - 14.0) <= 2.0
    assert f"ENDED {alert.alert_id}" in done.stdout
    assert alert.clip and alert.clip_covered and (root / alert.clip).stat().st_size > 0, alert
    assert "EncoderActor" in places.seen["worker"] and "ReaderActor" in places.seen["head"], places.seen
    samples = [row["sample_index"] for row in IndexReader(IndexRoot.at(root)).timeline("cam").to_pylist()
               if row["kind"] == "frame"]
    assert samples and len(samples) == len(set(samples))  # every sample once


def test_a_worker_node_dying_mid_ingest_stops_with_an_error_and_a_rerun_completes(cluster, tmp_path,
                                                                                 settings):  # noqa: F811
    """The encoders run on a node that dies (its raylet SIGKILLed) mid-ingest and no live node
    can host them: after `ingest.node_wait_s` the ingest commits what was encoded and exits 1 with
    one line saying why; run again once such a node is back, it completes every sample once."""
    config = write_config(settings, tmp_path / "config.yaml", reader={"fps": 4.0},
                          encoder={"resources": {"doomed_node": 1}}, ingest={"node_wait_s": 3.0, "batch_frames": 4})
    video = make_video(cluster.data / "long.mp4", duration_s=60, fps=FPS, codec="libx264")
    root = cluster.data / "doomed-index"
    log = tmp_path / "ingest.log"
    args = ["vidx", "ingest", f"long={video}", "--index", str(root), "--config", str(config), "--address",
            cluster.head.address, "--no-progress"]
    with ray_node(cluster.head, num_cpus=1, resources={"doomed_node": 1}, hidden=cluster.data) as doomed:
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, cwd=REPO, env=cluster.head.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: committed(root, "long") >= 8, 180, "frames committed", proc, log)
            assert doomed.pids("ray::EncoderActor")
            doomed.kill_raylet()
            killed_at = time.monotonic()
            proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # the dying raylet's state dump comes to the driver's output too (log_to_driver)
    output = "\n".join(line for line in log.read_text(errors="replace").splitlines() if "state-dump" not in line)
    assert proc.returncode == 1, output[-3000:]
    assert "ingest: error: ClusterError: no live Ray node can host the encoders (CPU 1, doomed_node 1)" in output, \
        output[-3000:]
    print(f"stopped {time.monotonic() - killed_at:.1f} s after the node died")
    before = committed(root, "long")
    assert 8 <= before < 240, before  # mid-ingest, and what was committed is kept
    check_index(root)

    with ray_node(cluster.head, num_cpus=1, resources={"doomed_node": 1}, hidden=cluster.data):
        rerun = cluster.run(*args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    assert summary_frames(rerun.stdout) == {"long": 240 - before}
    assert check_index(root, {"long": 240}).manifest.streams["long"].complete  # every sample once


def test_a_worker_node_dying_mid_ingest_is_replaced_and_the_ingest_goes_on(cluster, tmp_path, settings):  # noqa: F811
    """The encoders' node dies mid-ingest and another node like it joins within
    `ingest.node_wait_s` (as an autoscaler would start one): Ray restarts the encoders there, the
    readers resend what was not committed, and the same ingest completes, every sample once."""
    config = write_config(settings, tmp_path / "config.yaml", reader={"fps": 4.0},
                          encoder={"resources": {"spare_node": 1}}, ingest={"node_wait_s": 120.0, "batch_frames": 4})
    video = make_video(cluster.data / "long.mp4", duration_s=40, fps=FPS, codec="libx264")
    root = cluster.data / "replaced-index"
    log = tmp_path / "ingest.log"
    args = ["vidx", "ingest", f"long={video}", "--index", str(root), "--config", str(config), "--address",
            cluster.head.address, "--no-progress"]
    with ray_node(cluster.head, num_cpus=1, resources={"spare_node": 1}, hidden=cluster.data) as first:
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, cwd=REPO, env=cluster.head.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: committed(root, "long") >= 8, 180, "frames committed", proc, log)
            assert first.pids("ray::EncoderActor")
            first.kill_raylet()
            # the replacement joins once the driver has seen the node gone (on an idle machine it could
            # otherwise join before the GCS declares the first one dead, and nothing would be waited for)
            wait_for(lambda: "no live Ray node can host the encoders" in log.read_text(errors="replace"), 120,
                     "the driver noticing that no node can host the encoders", proc, log)
            with ray_node(cluster.head, num_cpus=1, resources={"spare_node": 1}, hidden=cluster.data) as second:
                wait_for(lambda: bool(second.pids("ray::EncoderActor")), 120, "the encoder restarted", proc, log)
                proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = "\n".join(line for line in log.read_text(errors="replace").splitlines() if "state-dump" not in line)
    assert proc.returncode == 0, output[-3000:]
    assert "no live Ray node can host the encoders (CPU 1, spare_node 1): waiting up to 120 s" in output
    assert summary_frames(output) == {"long": 160}
    assert check_index(root, {"long": 160}).manifest.streams["long"].complete  # every sample once
