"""finetune.core.progress.Progress: progress in whole lines on stderr, counted and with a
rate, throttled but always reporting the end."""

from __future__ import annotations

from finetune.core.progress import Progress


def test_progress_lines_count_and_rate(capsys):
    progress = Progress("decoding", total=10, every_s=0)
    for _ in range(4):
        progress.update(3 if progress.done < 9 else 1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "decoding: 3/10 images", "decoding: 6/10 images", "decoding: 9/10 images",
        "decoding: 10/10 images"]
    assert lines[-1].startswith("decoding: 10/10 images (100%, ") and lines[-1].endswith(
        " images/s)")


def test_progress_is_throttled_but_always_reports_the_end(capsys):
    progress = Progress("predict", total=1000, every_s=3600)
    for _ in range(100):
        progress.update(10)
    assert capsys.readouterr().err.splitlines()[0].startswith("predict: 1,000/1,000 images")
    assert progress.done == 1000
