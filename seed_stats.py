"""Statistics over seeds: runs grouped as seeds of one configuration, the mean and spread
of their errors, and 95% t-intervals of a mean and of a hyper - plain gap."""

from __future__ import annotations

import json
import statistics

from run_records import Run, configuration

# Student's t, 97.5% quantile, by degrees of freedom (n - 1); beyond 30 the value at 30 (slightly wide).
T_975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def seed_group(run: Run, ignoring: tuple[str, ...] = ()) -> str:
    """What a run's result depends on besides its seed (and the flags IGNORING): runs with
    equal groups are seeds of one configuration."""
    left_out = ("seed", *ignoring)
    return json.dumps(
        [run.experiment, {k: v for k, v in configuration(run).items() if k not in left_out}], sort_keys=True
    )


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """RUNS grouped by configuration, in the runs' order, one run per seed: a seed trained
    again (e.g. on another machine) is no independent draw, so only its first run counts."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        group = groups.setdefault(seed_group(run), [])
        if all(other.config["seed"] != run.config["seed"] for other in group):
            group.append(run)
    return list(groups.values())


def reruns(runs: list[Run]) -> list[Run]:
    """The runs of RUNS that `seed_groups` leaves out: a seed of their configuration ran before them."""
    counted = {id(run) for group in seed_groups(runs) for run in group}
    return [run for run in runs if id(run) not in counted]


def mean_sd(values: list[float]) -> str:
    """mean ± sample standard deviation, in percent."""
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}%"


def mean_interval(values: list[float]) -> tuple[float, float]:
    """The two-sided 95% t-interval of the mean of VALUES (at least two)."""
    mean, n = statistics.mean(values), len(values)
    half = T_975[min(n - 1, len(T_975)) - 1] * statistics.stdev(values) / n**0.5
    return mean - half, mean + half


def gap_interval(hyper: list[float], plain: list[float]) -> tuple[float, float, float]:
    """mean(HYPER) - mean(PLAIN), its standard error, and the half-width of its 95% Welch t-interval."""
    a, b = statistics.variance(hyper) / len(hyper), statistics.variance(plain) / len(plain)
    se = (a + b) ** 0.5
    df = (a + b) ** 2 / (a**2 / (len(hyper) - 1) + b**2 / (len(plain) - 1)) if a + b else len(hyper) + len(plain) - 2
    t = T_975[min(max(int(df), 1), len(T_975)) - 1]  # df rounded down: the interval errs wide
    return statistics.mean(hyper) - statistics.mean(plain), se, t * se
