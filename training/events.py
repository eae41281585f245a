"""The trainer's progress events: one JSON object per line on stdout with ``sevnet-train --progress-json``.

Declared once here, read by the trainer (``training.loop``) and by the
Fine-tune dock that follows a run. Every event is ``{"event": NAME, **fields}``.
"""

from __future__ import annotations

START = "start"
STEP = "step"
EPOCH = "epoch"  # sent after the epoch's checkpoint is saved: a run stopped on it keeps that epoch
VALIDATION = "validation"
OTHERS = "others"  # the replay cases kept out of a fine-tune (data.replay_check_cases): other patients it may harm
DONE = "done"
ERROR = "error"
STOPPED = "stopped"

#: the fields each event carries
FIELDS: dict[str, tuple[str, ...]] = {
    START: ("run_dir", "epochs", "start_epoch", "train_cases", "val_cases", "validation", "device"),
    STEP: ("epoch", "epochs", "step", "steps", "loss", "eta_s"),
    EPOCH: ("epoch", "epochs", "loss", "lr", "eta_s"),
    VALIDATION: ("epoch", "dice", "hd95", "mean_dice"),  # dice / hd95: {region: value}
    OTHERS: ("epoch", "dice", "mean_dice", "cases", "learnt_by_start"),  # cases: their ids; learnt_by_start: how many the starting model trained on
    DONE: ("run_dir", "best", "best_mean_dice", "seconds"),
    ERROR: ("message",),
    STOPPED: ("message",),
}

#: how far the mean Dice of the replay cases kept out of a fine-tune (OTHERS) may fall before the run says it harmed other patients
OTHERS_TOLERANCE = 0.02


def fell_by(start: dict, now: dict) -> float:
    """How far the mean Dice over the regions fell from ``start`` to ``now`` ({region: Dice}; negative: it rose)."""
    return sum(start[r] - now[r] for r in start) / len(start)


def event(name: str, **fields) -> dict:
    """The event as a dict, checked against :data:`FIELDS` (a typo here would silently blank the GUI)."""
    expected = FIELDS[name]
    if set(fields) != set(expected):
        raise ValueError(f"event {name!r} takes fields {expected}, got {sorted(fields)}")
    return {"event": name, **fields}
