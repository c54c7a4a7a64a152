"""Scalars to TensorBoard event files (no TensorFlow needed) and to a JSON-lines file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def drop_rows_after(path: Path, step: int) -> int:
    """Removes the rows of the JSON-lines file `path` whose step is beyond `step` (written
    after the checkpoint a run resumes from); returns how many (the file is replaced
    atomically, and left as it is when none are)."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    # A line cut short by a kill is not JSON: it was written after the checkpoint too.
    kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
    if len(kept) < len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)
    return len(lines) - len(kept)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class NoMetricsWriter:
    """`MetricsWriter`'s interface, writing nothing: a run's processes other than the first
    (`metrics_writer`), whose scalars are the first one's."""

    def write(self, step: int, scalars: dict) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoMetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        pass


def metrics_writer(directory, *, resumed_at: int | None = None, primary: bool = True):
    """A `MetricsWriter` in the primary process (the one that writes the work directory),
    a `NoMetricsWriter` in the others."""
    return MetricsWriter(directory, resumed_at=resumed_at) if primary else NoMetricsWriter()


class MetricsWriter:
    """`write(step, {"name": value})` appends to `<dir>/events.out.tfevents.*` and
    `<dir>/metrics.jsonl`; `tensorboard --logdir <workdir>` shows the curves.

    metrics.jsonl is line-buffered (a row is on disk once written, whatever kills the
    process later); `flush()` also writes the queued TensorBoard events. `resumed_at=N`
    (a run restored from checkpoint N) first drops the rows beyond step N, and tells
    TensorBoard to discard the events beyond it (a `SessionLog.START` at step N + 1)."""

    def __init__(self, directory, *, resumed_at: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        jsonl = self.directory / "metrics.jsonl"
        if resumed_at is not None:
            drop_rows_after(jsonl, resumed_at)
        self._events = EventFileWriter(str(self.directory))
        self._jsonl = open(jsonl, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        if resumed_at is not None:
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._events.add_event(
                event_pb2.Event(wall_time=time.time(), step=resumed_at + 1, session_log=start)
            )

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
