"""A run's configuration: one typed object, and the one table of what each flag means.

Every flag of train.py and mnist.py is a field of `RunConfig` or of its experiment's
subclass, with a `Role`: whether the flag changes the run's result (then its default name
says it and it groups the run's seeds) and what a resume does with it. The parsers
(`experiment.build_parser`) add help texts and defaults; `tests/test_config.py` checks
that they and these fields name the same flags, in the same order.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple


class Role(NamedTuple):
    """What a flag is to a run."""

    result: bool  # changes what the run computes: part of its default name and its seed group
    # On resume: "fixed" refuses a value other than the checkpoint's; "kept" keeps the
    # checkpoint's unless given again; "given" takes the resuming command's, defaults included.
    on_resume: Literal["fixed", "kept", "given"]
    local: bool = False  # a path on the machine that ran it: left out of the archive


SETTING = Role(result=True, on_resume="fixed")  # the model, the data split, the schedule
STOPPING = Role(result=True, on_resume="kept")  # when and how a run evaluates: may change on resume
FILES = Role(result=False, on_resume="kept", local=True)  # where the data and the run's files are
SESSION = Role(result=False, on_resume="given")  # how this process executes the run
NAME = Role(result=False, on_resume="fixed")


def flag(role: Role) -> Any:
    """A config field of ROLE (no default: the parser supplies defaults)."""
    return dataclasses.field(metadata={"role": role})


@dataclasses.dataclass
class RunConfig:
    """The flags every experiment has, in the parser's order."""

    epochs: int | None = flag(SETTING)  # None: the schedule's own
    batch_size: int = flag(SETTING)
    optimizer: str | None = flag(SETTING)  # None: the schedule's own
    lr: float | None = flag(SETTING)  # None: the schedule's own
    weight_decay: float = flag(SETTING)
    seed: int = flag(SETTING)
    val_size: int = flag(SETTING)
    patience: int | None = flag(STOPPING)
    precise_bn: int = flag(STOPPING)
    stop_after: int | None = flag(SESSION)
    data_dir: str = flag(FILES)
    download: bool = flag(Role(result=False, on_resume="kept"))
    device: str = flag(SESSION)
    amp: str = flag(SESSION)
    channels_last: bool | None = flag(SESSION)
    compile: bool = flag(SESSION)
    sync_bn: bool = flag(SESSION)
    eval_batch_size: int = flag(SESSION)
    progress: bool = flag(SESSION)
    run_name: str = flag(NAME)
    checkpoint_dir: str = flag(FILES)
    log_dir: str = flag(FILES)
    resume: str | None = flag(Role(result=False, on_resume="given", local=True))  # "": this run's last.pt


def roles(config_type: type[RunConfig]) -> dict[str, Role]:
    """Every flag of CONFIG_TYPE and its role, in command-line order."""
    return {f.name: f.metadata["role"] for f in dataclasses.fields(config_type)}


def result_flags(config_type: type[RunConfig]) -> list[str]:
    """The flags that change a run's result, the seed included, in command-line order."""
    return [name for name, role in roles(config_type).items() if role.result]


def as_dict(config: RunConfig) -> dict:
    """CONFIG's flags by name, in command-line order: what checkpoints and run folders hold."""
    return dataclasses.asdict(config)
