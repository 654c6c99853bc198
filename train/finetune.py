"""`python -m train --init RUN_OR_CHECKPOINT`: start from a trained model of ours (fine-tuning).

The field loop (capture -> label -> retrain) starts from the deployed model, often with other classes. Every
tensor whose name and shape match is loaded; the classification head (`class_head` of the model: the layer
whose outputs are the classes) is rebuilt when the class list differs, even when its length does not, since
class 2 of the old list is not class 2 of the new one.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from train.checkpoint import CheckpointError, load_checkpoint
from train.run_dir import RunDir


def init_checkpoint(source: str | Path, task: str) -> Path:
    """A run folder (its `<task>/best.pt`) or a checkpoint file -> the checkpoint to start the `task` from."""
    source = Path(source)
    if source.is_dir():
        path = RunDir.of(source).checkpoint(task)
        if not path.is_file():
            raise CheckpointError(f"{source}: this run has no trained {task} ({path} is missing); give a run "
                                  f"with one, or a {task} checkpoint file")
        return path
    if not source.is_file():
        raise CheckpointError(f"--init {source}: no such run folder or checkpoint file")
    return source


def init_task(source: str | Path) -> str:
    """The task a checkpoint file holds (for --init with a file: only that task starts from it)."""
    return load_checkpoint(source)["task"]


def init_from(model: nn.Module, source: str | Path, task: str, class_names: list[str]) -> dict[str, list[str]]:
    """Load the matching tensors of `source` (run folder or checkpoint) into `model` -> {"loaded", "new"}
    tensor names; prints the counts and why tensors are new."""
    path = init_checkpoint(source, task)
    ck = load_checkpoint(path)
    if ck["task"] != task:
        raise CheckpointError(f"{path}: a {ck['task']} checkpoint; --init for the {task} needs a {task} one")
    src, dst = ck["state_dict"], model.state_dict()
    same_classes = list(ck["class_names"]) == list(class_names)
    head = f"{model.class_head}."
    loaded = [k for k, v in dst.items()
              if k in src and src[k].shape == v.shape and (same_classes or not k.startswith(head))]
    if not loaded:
        raise CheckpointError(f"{path}: no tensor matches this {task} (another backbone or width?); check "
                              "`model:` in the config against the checkpoint's")
    model.load_state_dict({**dst, **{k: src[k] for k in loaded}})
    new = [k for k in dst if k not in set(loaded)]
    why = "" if same_classes else (f"; classes {list(ck['class_names'])} -> {list(class_names)}: "
                                   f"the classification head ({model.class_head}) is rebuilt")
    print(f"{task}: init from {path}: {len(loaded)} tensors loaded, {len(new)} new{why}", flush=True)
    return {"loaded": loaded, "new": new}
