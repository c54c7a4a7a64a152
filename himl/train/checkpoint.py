"""Orbax checkpoints of the TrainState, with errors that say what to do and never delete."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from himl.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint exists but cannot be restored into this run's state."""


class Checkpointer:
    """Saves every `every` steps (and on demand), keeps the newest `keep`."""

    def __init__(self, directory, *, every: int, keep: int):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=max(every, 1), create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, template, step: int | None = None):
        """Restores `step` (default: the latest) into the structure and shardings of
        `template`. The files are left untouched whatever happens."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax raises many types; all mean the same to the user
            self.manager.close()  # stop its background threads before the error unwinds
            raise CheckpointError(
                f"cannot restore checkpoint step {step} from {self.directory}: "
                f"{type(err).__name__}: {str(err).splitlines()[0][:300]}. It is corrupt or was "
                "written by a different model/loss config; it was left untouched - use another "
                "--workdir or move the checkpoints away to start over."
            ) from err

    def save(self, step: int, state, *, force: bool = False) -> bool:
        """Saves if `step` is due (always with `force`) and not saved already."""
        if step in self.manager.all_steps():
            return False
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
