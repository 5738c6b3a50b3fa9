"""Ingest jobs run the way a user runs them: `python -m actors.ingest` in a subprocess, on a local
Ray or on a `ray start --head` cluster of the test's own on localhost.

The cluster has its own temp dir (short: Ray's unix socket paths must stay under ~107
characters), its own ports (GCS, dashboard, dashboard agent, Ray Client) and token auth off.
`ray start --block` is the root of every process of the cluster (GCS, raylet, dashboard,
workers, job drivers): teardown sends it SIGTERM (it drains and stops its node) and SIGKILLs by
pid whatever of its descendants outlives that. Never `ray stop`: it stops every Ray process on
the machine, other developers' included.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from indexer.settings import Settings
from indexer.store import IndexReader
from indexer.store.root import IndexRoot

__all__ = ["REPO", "RayCluster", "RayNode", "committed", "driver_env", "kill_tree", "own_pids", "ray_cluster",
           "ray_node", "start_ingest", "summary_frames", "wait_for", "write_config"]

REPO = Path(__file__).resolve().parents[2]
NODE_OBJECT_STORE_BYTES = 256 * 2**20   # a node beside the head: Ray's default takes 30 % of the memory


# -- the index and the job, seen from outside -----------------------------------------------------
def write_config(settings: Settings, path: Path, **sections: dict) -> Path:
    """`settings` as a YAML config file, with `sections` merged in (e.g. reader={"fps": 2.0})."""
    data = settings.model_dump(mode="json")
    for name, values in sections.items():
        data[name] |= values
    path.write_text(yaml.safe_dump(data))
    return path


def committed(root: Path, stream_id: str | None = None) -> int:
    """Frames committed to the index at `root` (of one stream, or of all); 0 before the first commit."""
    try:
        manifest = IndexReader(IndexRoot.at(root)).manifest
    except (FileNotFoundError, ValueError):
        return 0
    if stream_id is None:
        return manifest.next_frame_id
    entry = manifest.streams.get(stream_id)
    return entry.frames if entry else 0


def summary_frames(output: str) -> dict[str, int]:
    """Frames sent per stream, from the summary `actors.ingest` prints ("  ID: N frames, ...")."""
    return {sid: int(n) for sid, n in re.findall(r"^  (\S+): (\d+) frames, ", output, flags=re.MULTILINE)}


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `predicate`; fail with `what` after `timeout_s`, or at once if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"{what}: the process exited with {proc.returncode} first\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(0.2)


def driver_env() -> dict[str, str]:
    """The environment of a driver that starts its own local Ray (no RAY_ADDRESS)."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}


def start_ingest(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m actors.ingest ARGS --no-progress` in its own session (so that a test can send
    SIGINT to its process group, as a terminal does on Ctrl-C), output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "actors.ingest", *args, "--no-progress"], cwd=REPO,
                                env=env or driver_env(), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process this test started, its process group and every descendant (a driver's
    local Ray)."""
    if proc.poll() is None:
        family = _descendants(proc.pid)
        for pid, (start, _) in family.items():
            if _same_process(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def own_pids(prefix: str) -> list[int]:
    """Descendants of this process (e.g. the workers of its own local `ray.init`, no one else's)
    whose command line starts with `prefix` (e.g. "ray::WriterActor")."""
    return sorted(pid for pid, (_, cmd) in _descendants(os.getpid()).items() if cmd.startswith(prefix))


# -- a cluster of the test's own ------------------------------------------------------------------
@dataclass(frozen=True)
class RayCluster:
    address: str                 # GCS address, for `ray.init(address=...)` / `--address`
    dashboard_url: str | None    # http://127.0.0.1:PORT for `ray job ... --address` (None: no dashboard)
    temp_dir: Path
    root_pid: int                # `ray start --block`
    env: dict[str, str]          # for drivers and `ray` commands: RAY_ADDRESS unset, token auth off

    def processes(self) -> dict[int, str]:
        """pid -> command line of every live process of this cluster (descendants of `ray start`)."""
        return {pid: cmd for pid, (_, cmd) in _descendants(self.root_pid).items()}

    def pids(self, prefix: str) -> list[int]:
        """This cluster's processes whose command line starts with `prefix` (e.g. "ray::WriterActor")."""
        return sorted(pid for pid, cmd in self.processes().items() if cmd.startswith(prefix))


@contextlib.contextmanager
def ray_cluster(num_cpus: int = 2, dashboard: bool = False, env: dict[str, str] | None = None,
                ready_timeout_s: float = 120.0, resources: dict[str, float] | None = None) -> Iterator[RayCluster]:
    """A head node with `num_cpus` (and custom `resources`); `env` adds variables to its
    environment (e.g. RAY_JOB_STOP_WAIT_TIME_S, which the job supervisor reads)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    # token auth switches itself on where ~/.ray/auth_token exists (machine state): decide here
    base_env = driver_env()
    gcs_port, dashboard_port, agent_port, client_port = _free_ports(4)
    cmd = ["ray", "start", "--head", "--block", f"--num-cpus={num_cpus}", f"--port={gcs_port}",
           f"--temp-dir={temp_dir}", f"--ray-client-server-port={client_port}",
           f"--dashboard-agent-listen-port={agent_port}", "--disable-usage-stats",
           f"--include-dashboard={str(dashboard).lower()}", f"--resources={json.dumps(resources or {})}"]
    if dashboard:
        cmd += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    log = temp_dir / "ray-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=base_env | (env or {}), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address_file = temp_dir / "ray_current_cluster"
        wait_for(lambda: address_file.exists() and bool(address_file.read_text().strip()), ready_timeout_s,
                 "ray start", proc, log)
        dashboard_url = f"http://127.0.0.1:{dashboard_port}" if dashboard else None
        if dashboard_url:
            wait_for(lambda: _http_answers(f"{dashboard_url}/api/version"), ready_timeout_s, "the dashboard",
                     proc, log)
        yield RayCluster(address_file.read_text().strip(), dashboard_url, temp_dir, proc.pid, base_env)
    finally:
        _stop(proc, _descendants(proc.pid))
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass(frozen=True)
class RayNode:
    """A node that joined a `RayCluster` (`ray start --address ... --block`)."""

    node_id: str
    temp_dir: Path
    root_pid: int                # `ray start --block` (or `unshare`, which execs it)

    def processes(self) -> dict[int, str]:
        return {pid: cmd for pid, (_, cmd) in _descendants(self.root_pid).items()}

    def pids(self, prefix: str) -> list[int]:
        return sorted(pid for pid, cmd in self.processes().items() if cmd.startswith(prefix))

    def kill_raylet(self) -> None:
        """SIGKILL this node's raylet, as when its machine dies: its workers go with it."""
        (pid,) = [pid for pid, cmd in self.processes().items() if "/raylet/raylet " in cmd]
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def ray_node(cluster: RayCluster, num_cpus: int = 1, resources: dict[str, float] | None = None,
             hidden: Path | None = None, ready_timeout_s: float = 120.0) -> Iterator[RayNode]:
    """Another node of `cluster` on this machine, with `num_cpus` and custom `resources`. With
    `hidden`, the node (its raylet and every worker it starts) sees an empty folder there: it runs
    in a mount namespace of its own with a tmpfs over `hidden` (`unshare --mount`), as
    a node on another machine does not see the driver's disk. Root mounts in a mount namespace;
    another user does it in a user namespace of its own (`--map-root-user`), where the kernel allows."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rn-", dir="/tmp"))
    (agent_port,) = _free_ports(1)
    cmd = ["ray", "start", f"--address={cluster.address}", "--block", f"--num-cpus={num_cpus}",
           f"--temp-dir={temp_dir}", f"--object-store-memory={NODE_OBJECT_STORE_BYTES}",
           f"--dashboard-agent-listen-port={agent_port}", "--disable-usage-stats",
           f"--resources={json.dumps(resources or {})}"]
    if hidden is not None:
        user_namespace = ["--user", "--map-root-user"] if os.geteuid() != 0 else []
        cmd = ["unshare", *user_namespace, "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs hidden "$0" && exec "$@"', str(hidden), *cmd]
    log = temp_dir / "ray-start.log"
    known = _node_ids(cluster)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=cluster.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: bool(_node_ids(cluster) - known), ready_timeout_s, "ray start (another node)", proc, log)
        (node_id,) = _node_ids(cluster) - known
        yield RayNode(node_id, temp_dir, proc.pid)
    finally:
        _stop(proc, _descendants(proc.pid))
        shutil.rmtree(temp_dir, ignore_errors=True)


def _node_ids(cluster: RayCluster) -> set[str]:
    """Ids of the cluster's live nodes, as `ray list nodes` gives them (no dashboard needed: the GCS)."""
    from ray._raylet import GcsClient  # a driver-less client: this test process stays out of the cluster

    nodes = GcsClient(address=cluster.address).get_all_node_info(timeout=10)
    return {info.node_id.hex() for info in nodes.values() if info.state == 0}  # 0: ALIVE


def _stop(proc: subprocess.Popen, family: dict[int, tuple[str, str]]) -> None:
    """SIGTERM `ray start` (it drains and stops its node), then SIGKILL what is left of it."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while any(_same_process(pid, start) for pid, (start, _) in family.items()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, (start, _) in family.items():
        if _same_process(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is its pid


def _descendants(root: int) -> dict[int, tuple[str, str]]:
    """pid -> (start time, command line) of `root`'s live descendants, from /proc."""
    parent, info = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        parent[int(entry.name)] = int(fields[1])
        info[int(entry.name)] = (fields[19], cmd)  # field 22 of stat: start time in clock ticks
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in found:
                found[child] = info[child]
                frontier.append(child)
    return found


def _same_process(pid: int, start: str) -> bool:
    """`pid` is alive and is still the process that started at `start` (not a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[19] == start


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:  # an error status is an answer: it is up
        return True
    except (urllib.error.URLError, OSError):
        return False
