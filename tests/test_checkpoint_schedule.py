"""The periodic checkpoint skips a model that has not moved since the last one (a finished or paused peer),
while a checkpoint asked for outright (at stop) is always written.

A real `TaskRuntime` trains the small default task alone on a fake network, as in `tests.test_disk_full`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import trio

from gossipd.mixing.layout import mixed_parameters
from gossipd.services.trainer_service import TrainerService
from tests.test_disk_full import running_task, train_some


async def test_an_unchanged_model_is_not_checkpointed_again_until_it_moves(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with running_task(tmp_path) as runtime:
            assert runtime.services is not None
            trainer, store = runtime.services.trainer, runtime.services.store
            assert isinstance(trainer, TrainerService) and store is not None
            await train_some(runtime)
            trainer.pause()
            first = await runtime.checkpoint(only_if_changed=True)
            assert first is not None  # nothing written yet in this run
            files = sorted(store.folder.iterdir())
            written_at = runtime.status().last_checkpoint

            assert await runtime.checkpoint(only_if_changed=True) is None  # paused: the model held still
            assert sorted(store.folder.iterdir()) == files
            assert runtime.status().last_checkpoint == written_at

            at_stop = await runtime.checkpoint()  # asked for outright: written even so
            assert at_stop is not None

            # A neighbour's delta moves the model while training stays paused: the next one is written.
            params = mixed_parameters(trainer.trainer.model)
            trainer.submit({name: torch.full_like(t, 1e-3) for name, t in params.items()})
            moved = await runtime.checkpoint(only_if_changed=True)
            assert moved is not None
            assert await runtime.checkpoint(only_if_changed=True) is None
