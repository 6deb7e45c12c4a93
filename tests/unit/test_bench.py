"""scripts/bench.py's figures from its repeats: median and range, DVC's own time (the wall
time outside the stage processes) and train's start-up, from finetune.core.timings's marks."""

from __future__ import annotations

from scripts.bench import (
    STARTUP_STEPS,
    Measured,
    dvc_own_s,
    ranged,
    spread,
    train_startup,
)


def measured(wall_s: float, marks: list[dict]) -> Measured:
    return Measured(command=["dvc"], returncode=0, wall_s=wall_s, cpu_s=0.0, max_rss_mib=0.0,
                    tree_rss_mib=0.0, load_before=0.0, log="", marks=marks)


def marks(pid: int, stage: str, **events: float) -> list[dict]:
    return [{"stage": stage, "pid": pid, "event": event, "time": at}
            for event, at in events.items()]


TRAIN = marks(2, "train", start=103.0, main=107.0, configured=107.5, backbone=109.0,
              inputs=109.5, weights=110.5, model=111.0, fit=111.25, exit=140.0)


def test_dvc_own_time_is_the_wall_time_outside_the_stage_processes() -> None:
    run = measured(50.0, marks(1, "evaluate", start=141.0, exit=146.0) + TRAIN)
    assert dvc_own_s(run) == 50.0 - 5.0 - 37.0
    assert dvc_own_s(measured(3.0, [])) is None  # no stage ran: no figure, not 3 s


def test_train_start_up_is_split_into_its_steps() -> None:
    startup = train_startup(measured(50.0, TRAIN))
    assert startup is not None
    assert startup["total"] == 8.25
    assert list(startup)[1:] == [name for name, _, _ in STARTUP_STEPS]
    assert sum(startup[name] for name, _, _ in STARTUP_STEPS) == startup["total"]
    assert train_startup(measured(5.0, marks(3, "evaluate", start=1.0, exit=2.0))) is None


def test_repeats_give_the_median_and_range() -> None:
    figure = spread([314.0, 270.0, None, 290.0])
    assert figure == {"median": 290.0, "min": 270.0, "max": 314.0, "n": 3}
    assert ranged(figure) == "290.0 [270.0-314.0]"
    assert ranged(spread([4.25])) == "4.2"
    assert spread([None]) is None and ranged(None) == "-"
