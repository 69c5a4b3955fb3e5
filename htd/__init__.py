"""Learning-rate schedules (hyperbolic-tangent decay and the usual baselines) for Keras 3.

    from htd import make_schedule, lr_per_epoch, SCHEDULES
    python -m htd show --schedule htd --epochs 200 --lr 0.1
    python -m htd plot --schedules step cosine htd --epochs 200 --lr 0.1 --out lr.png

Importing this package registers the schedule classes with Keras, which `load_model` needs to
restore an optimizer that uses one of them (see htd/schedules.py).
"""

from htd.schedules import (
    SCHEDULES,
    ConstantSchedule,
    CosineSchedule,
    EpochSchedule,
    ExponentialSchedule,
    HTDSchedule,
    OneCycleSchedule,
    StepSchedule,
    default_milestones,
    evaluate,
    lr_per_epoch,
    make_schedule,
)

__all__ = [
    "SCHEDULES", "ConstantSchedule", "CosineSchedule", "EpochSchedule", "ExponentialSchedule",
    "HTDSchedule", "OneCycleSchedule", "StepSchedule",
    "default_milestones", "evaluate", "lr_per_epoch", "make_schedule",
]
