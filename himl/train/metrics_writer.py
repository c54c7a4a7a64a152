"""Scalars to TensorBoard event files (no TensorFlow needed) and to a JSON-lines file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricsWriter:
    """`write(step, {"name": value})` appends to `<dir>/events.out.tfevents.*` and
    `<dir>/metrics.jsonl`; `tensorboard --logdir <workdir>` shows the curves."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._events = EventFileWriter(str(self.directory))
        self._jsonl = open(self.directory / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write(self, step: int, scalars: dict) -> None:
        scalars = {k: float(v) for k, v in scalars.items()}
        values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
        event = event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
        )
        self._events.add_event(event)
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")

    def flush(self) -> None:
        self._events.flush()
        self._jsonl.flush()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._events.close()
        self._jsonl.close()
