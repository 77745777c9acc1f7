"""Forks processes that save ~20 MB checkpoints in a loop until killed; the kill -9 tests run it.

Usage: checkpoint_writer.py FOLDER, then commands on stdin, one a line:

    go <first step>   fork a writer that saves steps first, first + 1, … and prints "saved <step>" after each
                      save returns; answers "child <pid>"
    reap              wait for that writer to die (the test kills it); answers "reaped <wait status>"

Forking from this one process, which imported torch once, makes a new writer cost milliseconds rather than
seconds of imports, so a test can afford many kills. Nothing here has started threads before a fork.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import torch

from gossipd.adapters.checkpoint_store import CheckpointStore

TENSORS = 5
TENSOR_SIZE = 1 << 20  # float32, so 4 MiB each and 20 MiB per checkpoint
KEEP = 2


def state_for(step: int, tensors: dict[str, torch.Tensor] | None = None) -> dict[str, object]:
    """What a writer saves at `step`: every tensor element equals the step.

    Given `tensors` are refilled in place, sparing a writer 20 MB of fresh allocations per step, so more of
    its time goes to saving and more of the kills land inside a save.
    """
    if tensors is None:
        tensors = {f"t{i}": torch.empty(TENSOR_SIZE) for i in range(TENSORS)}
    for tensor in tensors.values():
        tensor.fill_(float(step))
    return {"step": step, "tensors": tensors, "note": f"written at step {step}"}


def say(line: str) -> None:
    # One write of a short line is atomic on a pipe, so the lines of the writer and of this parent never mix.
    # The leading newline ends any line a killed writer left unfinished.
    os.write(sys.stdout.fileno(), f"\n{line}\n".encode())


def write_forever(folder: Path, step: int) -> None:
    store = CheckpointStore(folder, keep=KEEP)
    tensors = {f"t{i}": torch.empty(TENSOR_SIZE) for i in range(TENSORS)}
    while True:
        store.save(state_for(step, tensors), step=step)
        say(f"saved {step}")
        step += 1


def main(argv: list[str]) -> int:
    folder = Path(argv[1])
    child = 0
    say("ready")
    for line in sys.stdin:
        match line.split():
            case ["go", first]:
                child = os.fork()
                if child == 0:
                    try:
                        write_forever(folder, int(first))
                    except BaseException:
                        traceback.print_exc()
                    os._exit(1)  # never return into the parent's command loop
                say(f"child {child}")
            case ["reap"]:
                _, status = os.waitpid(child, 0)
                say(f"reaped {status}")
            case _:
                return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
