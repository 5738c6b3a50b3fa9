"""Where the ingest's actors run on a Ray cluster of several nodes.

The index root is the driver's: the driver checks it and plans the ingest from its manifest, saves
the settings there, runs the monitor, and captures live sources with their recordings under it.
So the actors that touch the driver's files run on the driver's node (hard node affinity: Ray
never moves them elsewhere, also when it restarts them):
- the `WriterActor`, which writes the files the driver and the monitor read;
- a `ReaderActor` whose source is a local file, or may be live (fed by the driver's capture, or
  keeping its recording under the root).
Readers of files over the network and the encoders run on any node that has what they ask for
(`encoder.num_gpus`, `encoder.resources`): the work a cluster is there to spread.

`EncoderWatch` notices when no live node can host the encoders (at the start, or after their node
died and nothing like it is left) and after `ingest.node_wait_s` ends the ingest with an error
instead of waiting for ever (an autoscaler may add a node in that time)."""

from __future__ import annotations

import logging
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from indexer.media.source import Source
from indexer.settings import EncoderSettings

logger = logging.getLogger(__name__)
CHECK_EVERY_S = 1.0   # `ray.nodes()` asks the GCS: not on every turn of the driver's loop


class ClusterError(Exception):
    """The cluster cannot go on with this ingest (no node can host the encoders): not bad input, exit 1."""


def on_driver_node() -> NodeAffinitySchedulingStrategy:
    """Ray's scheduling strategy for an actor that must run where this driver runs."""
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def reads_on_driver_node(source: Source) -> bool:
    """A local file exists on the driver's node; a source that may be live is fed by the driver's
    capture or keeps its recording under the index root."""
    return source.protocol == "file" or source.maybe_live


def encoder_demand(encoder: EncoderSettings) -> dict[str, float]:
    """The resources one encoder actor needs on a single node."""
    demand = {"CPU": encoder.num_cpus, "GPU": encoder.num_gpus, **encoder.resources}
    return {name: amount for name, amount in demand.items() if amount > 0}


def can_host(demand: dict[str, float]) -> bool:
    """Some live node of the cluster has (in total, free or not) every resource of `demand`."""
    return any(node["Alive"] and all(node["Resources"].get(name, 0.0) >= amount for name, amount in demand.items())
               for node in ray.nodes())


class EncoderWatch:
    """`check()` raises `ClusterError` once no live node has been able to host the encoders for
    `wait_s`; it warns when that starts."""

    def __init__(self, encoder: EncoderSettings, wait_s: float):
        self.demand = encoder_demand(encoder)
        self.wait_s = wait_s
        self._since: float | None = None
        self._next_check = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        if can_host(self.demand):
            if self._since is not None:
                logger.warning("a node that can host the encoders is back: the ingest goes on")
            self._since = None
            return
        if self._since is None:
            self._since = now
            logger.warning("no live Ray node can host the encoders (%s): waiting up to %.0f s (ingest.node_wait_s) "
                           "for one to join", _resources(self.demand), self.wait_s)
        if now - self._since >= self.wait_s:
            raise ClusterError(f"no live Ray node can host the encoders ({_resources(self.demand)}) for "
                               f"{self.wait_s:.0f} s (ingest.node_wait_s): stopped after committing what was encoded; "
                               "run the same command again once the cluster has such a node (it resumes where this "
                               "one stopped)")

    def wait(self, ref: ray.ObjectRef) -> None:
        """Until `ref` is ready (ray.get it then), checking meanwhile."""
        while not ray.wait([ref], timeout=CHECK_EVERY_S)[0]:
            self.check()


def _resources(demand: dict[str, float]) -> str:
    return ", ".join(f"{name} {amount:g}" for name, amount in demand.items())


__all__ = ["ClusterError", "EncoderWatch", "can_host", "encoder_demand", "on_driver_node", "reads_on_driver_node"]
