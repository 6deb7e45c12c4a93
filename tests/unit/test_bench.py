"""scripts/bench.py's figures from its repeats: median and range, DVC's own time (the wall
time outside the stage processes) and train's start-up, from finetune.core.timings's marks;
and scripts/bench_decode.py's side-by-side decoding figures, with the verdict on them."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from PIL import Image

from scripts.bench import (
    STARTUP_STEPS,
    Measured,
    dvc_own_s,
    print_decoding,
    ranged,
    spread,
    train_startup,
)
from scripts.bench_decode import measure, size_label
from scripts.make_layout import KAGGLE, make_layout


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


def test_decoding_is_timed_per_folder_and_repeat_on_the_photos_read(tmp_path: Path) -> None:
    folders = [make_layout(tmp_path / str(size), 4, 1, size=size) / "train"
               for size in (200, KAGGLE)]
    result = measure(folders, limit=3, repeats=2, weights=None, precisions=[],
                     params={"image_size": 32})
    assert result["network"] is None and result["repeats"] == 2
    for folder, measured in zip(folders, result["folders"], strict=True):
        sizes = [Image.open(path).size for path in sorted(folder.glob("*.jpg"))[:3]]
        assert measured["images"] == 3
        assert measured["mean_width"] == statistics.fmean(width for width, _ in sizes)
        assert measured["mean_height"] == statistics.fmean(height for _, height in sizes)
        assert list(measured["rates"]) == ["decode"]
        rates = measured["rates"]["decode"]
        assert len(rates["images_per_s"]) == 2 and min(rates["images_per_s"]) > 0
        assert rates["median"] == statistics.median(rates["images_per_s"])
    assert size_label(result["folders"][0]) == "200x200"


def decoding(small: float, real: float) -> dict:
    def folder(width: int, rate: float) -> dict:
        return {"images": 500, "mean_width": width, "mean_height": width,
                "rates": {"decode": {"median": 600.0},
                          "features float32": {"median": rate}}}
    return {"image_size": 150, "repeats": 3, "network": "InceptionV3",
            "folders": [folder(200, small), folder(400, real)]}


@pytest.mark.parametrize(("real", "verdict"), [(86.0, "within 15%: yes"),
                                               (84.0, "within 15%: NO")])
def test_the_real_size_loop_is_judged_against_the_200_px_one(
        real: float, verdict: str, capsys: pytest.CaptureFixture[str]) -> None:
    print_decoding(decoding(100.0, real), network=None, photos="200")
    line = next(line for line in capsys.readouterr().out.splitlines()
                if "features float32" in line)
    assert f"{real / 100:.2f}" in line and verdict in line
