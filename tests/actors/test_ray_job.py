"""The ingest and monitor jobs through Ray's job API, as the README says: `ray job submit
--working-dir .` to a `ray start --head` cluster on localhost (the job API needs the dashboard). A
file is indexed with every sample once; a monitor job raises its alert; a live job stopped with
`ray job stop` (SIGTERM) commits what it sent."""

import json
import subprocess
import urllib.request

import pytest

from indexer.monitor.alerts import AlertLog
from indexer.monitor.queries import QueryStore
from indexer.store.root import IndexRoot
from tests.actors.jobs import REPO, committed, ray_cluster, summary_frames, wait_for, write_config
from tests.actors.test_ingest import FPS, check_index, settings  # noqa: F401  (fixture)
from tests.mediagen import make_video
from tests.monitor.scenes import make_scene_video
from tests.streams import hls_live

# Ray never uploads .git, .venv or what .gitignore lists (out/); the tests' golden data stays too
RUNTIME_ENV = json.dumps({"excludes": ["tests"]})


def _job_status(dashboard_url: str, job_id: str) -> str:
    with urllib.request.urlopen(f"{dashboard_url}/api/jobs/{job_id}", timeout=10) as response:
        return json.load(response)["status"]


@pytest.mark.slow
def test_ray_job_submit_indexes_a_file_and_ray_job_stop_commits_a_live_stream(tmp_path, settings):  # noqa: F811
    video = make_video(tmp_path / "clip.mp4", duration_s=6, fps=FPS, codec="libx264")
    config = write_config(settings, tmp_path / "config.yaml")  # models by absolute path
    files, live_root = tmp_path / "files", tmp_path / "live"
    # `ray job stop` SIGKILLs the job RAY_JOB_STOP_WAIT_TIME_S (default 3) after its SIGTERM:
    # room for the driver to commit and exit on its own, as the README advises
    with ray_cluster(dashboard=True, env={"RAY_JOB_STOP_WAIT_TIME_S": "30"}) as cluster:
        def ray_job(command: str, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["ray", "job", command, "--address", cluster.dashboard_url, *args], cwd=REPO,
                                  env=cluster.env, capture_output=True, text=True, timeout=300, check=False)

        def submit(job_id: str, *ingest: str, wait: bool = True) -> subprocess.CompletedProcess:
            return ray_job("submit", "--submission-id", job_id, "--working-dir", ".", "--runtime-env-json",
                           RUNTIME_ENV, *([] if wait else ["--no-wait"]), "--",
                           "python", "-m", "actors.ingest", *ingest, "--no-progress")

        # configs/tiny.yaml names out/tiny, which is git-ignored and so not uploaded: a usage error
        tiny = submit("tiny", f"clip={video}", "--index", str(tmp_path / "tiny"), "--config", "configs/tiny.yaml")
        assert tiny.returncode != 0 and _job_status(cluster.dashboard_url, "tiny") == "FAILED"
        assert "model path 'out/tiny/model' not found" in ray_job("logs", "tiny").stdout

        done = submit("file", f"clip={video}", "--index", str(files), "--config", str(config))
        assert done.returncode == 0, done.stdout + done.stderr
        assert _job_status(cluster.dashboard_url, "file") == "SUCCEEDED"
        index = check_index(IndexRoot.at(files), {"clip": 6})  # every sample once, FAISS ids = frame ids, true pts
        assert index.manifest.streams["clip"].complete
        assert summary_frames(ray_job("logs", "file").stdout) == {"clip": 6}

        # the monitor job: ingestion with a standing query, the alert printed in the job's log
        watched = tmp_path / "watched"
        QueryStore(IndexRoot.at(watched)).create(id="dark", kind="black", min_duration_s=2.0)
        scenes = make_scene_video(tmp_path / "scenes.mp4", 12.0, {"black": (4.0, 8.0)}, fps=FPS)
        monitored = ray_job("submit", "--submission-id", "monitor", "--working-dir", ".", "--runtime-env-json",
                            RUNTIME_ENV, "--", "python", "-m", "actors.monitor", f"cam={scenes}", "--index",
                            str(watched), "--config", str(config), "--no-progress")
        assert monitored.returncode == 0, monitored.stdout + monitored.stderr
        assert _job_status(cluster.dashboard_url, "monitor") == "SUCCEEDED"
        (alert,) = AlertLog(IndexRoot.at(watched)).alerts()
        assert (alert.query_id, alert.start_s, alert.end_s, alert.status) == ("dark", 4.0, 8.0, "closed")
        logs = ray_job("logs", "monitor").stdout
        assert f"ALERT {alert.alert_id} [cam 0:04]" in logs and f"ENDED {alert.alert_id} [cam 0:04-0:08]" in logs
        assert (watched / alert.clip).stat().st_size > 0

        with hls_live(duration_s=240, fps=FPS, size=(160, 120)) as (live, _):
            started = submit("live", f"live={live}", "--index", str(live_root), "--config", str(config), wait=False)
            assert started.returncode == 0, started.stdout + started.stderr

            def frames_committed() -> bool:
                status = _job_status(cluster.dashboard_url, "live")
                assert status in ("PENDING", "RUNNING"), (status, ray_job("logs", "live").stdout[-3000:])
                return committed(live_root, "live") >= 2

            wait_for(frames_committed, 240, "live frames committed by the job")
            stop = ray_job("stop", "live")  # SIGTERM; returns once the job has exited
            assert stop.returncode == 0, stop.stdout + stop.stderr
        assert _job_status(cluster.dashboard_url, "live") == "STOPPED"
        logs = ray_job("logs", "live").stdout
        # the job supervisor (an actor: its log is a worker-*.err) says whether it had to SIGKILL
        supervisor = "".join(p.read_text(errors="replace")
                             for p in (cluster.temp_dir / "session_latest" / "logs").glob("worker-*.err"))
        assert "Job live has been terminated gracefully" in supervisor, "the driver did not exit on its own"
    assert "(interrupted, committed)" in logs, logs[-3000:]  # the driver finished, not SIGKILLed
    index = check_index(IndexRoot.at(live_root))
    entry = index.manifest.streams["live"]
    assert entry.live and entry.error is None and entry.frames == summary_frames(logs)["live"] > 0
