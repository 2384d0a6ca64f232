"""Grounders that misbehave on marked records, for the fault tests (tests/test_prep_faults.py).
Data prep loads them with ``grounding.name=plugin grounding.plugin=fault_grounders:NAME``; the
Ray workers import this module because the tests put ``tests/`` on their PYTHONPATH.

A record is marked by the word ``MARK`` in its caption. They ground as the annotation grounder
does, so that a run with them writes the samples a run without them writes."""

import os
import time

from pipeline.grounding.annotations import AnnotationGrounder

MARK = "xylophone"
ARMED_ENV = "FAULT_GROUNDERS_ARMED"  # a file whose existence arms CrashOnPair


def marked(requests) -> int:
    return sum(MARK in " ".join(r.sentences) for r in requests)


class CrashOnMark(AnnotationGrounder):
    """Kills its worker process, as a native crash in a decoder would, on any marked record."""

    def ground(self, requests):
        if marked(requests):
            os._exit(134)
        return super().ground(requests)


class RaiseOnMark(AnnotationGrounder):
    """Fails on a marked record with an exception: a ``grounding_failed`` drop, the worker lives."""

    def ground(self, requests):
        if marked(requests):
            raise RuntimeError("a marked record")
        return super().ground(requests)


class CrashOnPair(AnnotationGrounder):
    """Kills its worker when two marked records are grounded together, while the file named by
    ``FAULT_GROUNDERS_ARMED`` exists: no record alone is poison, so probing finds none and the
    shard cannot be written until the fault is gone."""

    def ground(self, requests):
        if marked(requests) >= 2 and os.path.exists(os.environ.get(ARMED_ENV, "/nonexistent")):
            os._exit(134)
        return super().ground(requests)


class Slow(AnnotationGrounder):
    """Takes a tenth of a second per record: a job long enough for a node to join while it runs."""

    def ground(self, requests):
        time.sleep(0.1 * len(requests))
        return super().ground(requests)
