"""Where the job's set of seen ids lives (``ray.dedup``): in the driver, or across the cluster.

Every reader drops a record whose id an earlier record has, asking a set of the ids seen so far
which of a batch are new (``records.unique_ids``). ``driver``: one :class:`IdSet` in the driver,
13 bytes an id: 13 GB of the head node's memory at 10⁹ records. ``distributed``: the digests
split by their last bits across ``ray.dedup_parts`` Ray actors spread over the nodes, each an
IdSet of its part; a batch asks every part at once and the answers are put back in the batch's
order. A part sees its digests in the order the driver read them, so its answers, and the
dataset, are the driver set's, byte for byte.

A part lost with its node is rebuilt (:func:`read_unique`): the input is read again from its
start into a new set, up to the record the job had reached; the read is repeated, no shard is.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import numpy as np
import ray

from pipeline.config import JobIncomplete
from pipeline.prep.records import Drop, IdSet, InputRecord, SeenIds

log = logging.getLogger(__name__)

REBUILDS = 3  # parts lost in one job before it ends (a rerun with existing_output=resume finishes)

# makes a new, empty set of seen ids, closed when the read that uses it ends
IdSets = Callable[[], AbstractContextManager[SeenIds]]


def in_driver() -> AbstractContextManager[SeenIds]:
    return contextlib.nullcontext(IdSet())


def on_the_cluster(parts: int, timeout_s: float) -> IdSets:
    """New sets of ``parts`` actors each; a part that does not answer in ``timeout_s`` is lost."""
    return lambda: contextlib.closing(DistributedIdSet(parts, timeout_s))


class PartLost(Exception):
    """A part of a :class:`DistributedIdSet` died or stopped answering: the set is incomplete."""


@ray.remote(num_cpus=0)  # memory, not a worker's CPU: it runs beside the shard workers
class IdPart:
    """One part of a :class:`DistributedIdSet`: the digests whose last bits choose it."""

    def __init__(self) -> None:
        self.ids = IdSet()

    def add_new(self, digests: bytes) -> np.ndarray:
        return self.ids.add_new(digests)

    def size(self) -> int:
        return len(self.ids)


class DistributedIdSet:
    """:class:`IdSet`'s ``add_new``, its digests hash-partitioned across actors on the nodes
    (Ray's SPREAD), so the driver holds none of them."""

    def __init__(self, parts: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.parts = [IdPart.options(scheduling_strategy="SPREAD").remote() for _ in range(parts)]

    def add_new(self, digests: bytes) -> np.ndarray:
        """For each digest in order, whether it is new (:meth:`IdSet.add_new`); :class:`PartLost`
        when a part cannot answer."""
        rows = np.frombuffer(digests, dtype=IdSet.COLUMNS)
        part = rows["lo"] % len(self.parts)
        asked = [(p, part == p) for p in range(len(self.parts))]
        asked = [(p, mine) for p, mine in asked if mine.any()]
        calls = [self.parts[p].add_new.remote(rows[mine].tobytes()) for p, mine in asked]
        try:
            answers = ray.get(calls, timeout=self.timeout_s)
        except ray.exceptions.RayActorError as e:  # died, or unreachable
            raise PartLost(f"a part of the duplicate-id set is lost ({type(e).__name__})") from e
        except ray.exceptions.GetTimeoutError:
            raise PartLost(f"a part of the duplicate-id set did not answer in {self.timeout_s:g} s") from None
        new = np.empty(len(rows), dtype=bool)
        for (_, mine), answer in zip(asked, answers):
            new[mine] = answer
        return new

    def __len__(self) -> int:
        return sum(ray.get([part.size.remote() for part in self.parts], timeout=self.timeout_s))

    def close(self) -> None:
        for part in self.parts:
            ray.kill(part)


def read_unique(
    read: Callable[[SeenIds], Iterator[InputRecord | Drop]], id_sets: IdSets = in_driver
) -> Iterator[InputRecord | Drop]:
    """``read(seen)``'s items with a new set from ``id_sets``. Where the set loses a part, the
    input is read again into a new set and the items go on from the first not yet given: the
    readers are deterministic, so the repeated read rebuilds the set the lost one was."""
    given = -1  # the last ordinal given
    for rebuilt in range(REBUILDS + 1):
        with id_sets() as seen:
            try:
                for item in read(seen):
                    if item.ordinal > given:
                        given = item.ordinal
                        yield item
                return
            except PartLost as e:
                if rebuilt == REBUILDS:
                    raise JobIncomplete(f"{e}, for the {REBUILDS + 1}th time") from None
                log.warning(
                    "%s; reading the input again to rebuild it (%d inputs given so far)", e, given + 1
                )
