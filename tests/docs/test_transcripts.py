"""The docs' console transcripts (scripts/transcripts.py): the checker's rules on small
cases here, and every transcript of the README and docs run in a fresh demo project
(marked slow: it builds the demo, about 3 minutes; CI runs it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scripts.transcripts import (
    Command,
    Transcript,
    all_transcripts,
    find_transcripts,
    match,
    run,
    updated_block,
)
from tests.support.shared import MOBILENET_WEIGHTS, REAL_SAMPLE, ROOT, needs_shared

EPOCH = "25/25 - 0s - 16ms/step - accuracy: 0.7750 - loss: 0.4800"


def test_varying_parts_are_normalised_and_numbers_compared_within_the_tolerance():
    assert match([EPOCH], ["25/25 - 3s - 120ms/step - accuracy: 0.7750 - loss: 0.4800"], 1e-3)
    assert match(["  main   0.955   0.12842 "], ["main 0.955 0.12842"], 1e-3)
    assert match(["└── a3c817f [x-y]"], ["└── 0b9e1f2 [x-y]"], 1e-3)
    assert match(["features: 400/400 images (100%, 59 images/s)"],
                 ["features: 400/400 images (100%, 1,204 images/s)"], 1e-3)
    assert match(["loss 0.4800"], ["loss 0.48047"], 1e-3)
    # A changed figure, word or line count is a difference.
    assert match([EPOCH], [EPOCH.replace("0.7750", "0.7800")], 1e-3) is None
    assert match(["accuracy 0.845"], ["accuracy 0.85"], 1e-3) is None
    assert match(["accuracy 0.845"], ["accuracy 0.85"], 0.01)
    assert match(["train: saved"], ["train: kept"], 1e-3) is None
    assert match(["a", "b"], ["a"], 1e-3) is None
    assert match(["a"], ["a", "b"], 1e-3) is None


def test_an_ellipsis_stands_for_any_lines_and_blank_lines_do_not_count():
    shown = ["start", "...", "end"]
    assert match(shown, ["start", "end"], 0) == [0, -1, 1]
    assert match(shown, ["start", "x", "", "y", "end"], 0) == [0, -1, 3]
    assert match(shown, ["start", "x", "end", "extra"], 0) is None
    assert match(["...", "error: boom"], ["noise", "error: boom"], 0) == [-1, 1]
    assert match(["...", "error: boom"], ["error: bang"], 0) is None


def test_an_update_keeps_the_ellipses_where_the_output_still_matches():
    transcript = Transcript(ROOT / "README.md", 1, "demo", 1e-3, [
        Command("run", ["Running", "...", "saved 0.36", "..."]),
        Command("diff", ["old line"])])
    block = updated_block(transcript, [["Running", "epoch 1", "saved 0.36", "done"],
                                       ["new line", "second"]])
    assert block == ["$ run", "Running", "...", "saved 0.36", "...",
                     "$ diff", "new line", "second"]


def test_every_console_block_is_marked(tmp_path, monkeypatch):
    monkeypatch.setattr("scripts.transcripts.ROOT", tmp_path)
    page = tmp_path / "page.md"
    page.write_text("<!-- transcript: demo -->\n```console\n$ true\n```\n\n"
                    "<!-- transcript: not checked: needs two machines -->\n```console\n"
                    "$ ssh other\n```\n")
    assert [[c.line for c in t.commands] for t in find_transcripts(page)] == [["true"]]
    page.write_text("```console\n$ dvc repro\n```\n")
    with pytest.raises(SystemExit, match=r"page.md:1: a console block needs"):
        list(find_transcripts(page))


def test_commands_run_in_one_shell_and_experiment_names_carry_over(tmp_path):
    # A later command that names an experiment gets the name this run gave it.
    transcript = Transcript(ROOT / "README.md", 1, "demo", 1e-3, [
        Command("cd sub && echo \"Ran experiment(s): bold-fox\"",
                ["Ran experiment(s): medal-jura"]),
        Command("echo \"[medal-jura] in $(basename $PWD)\"", ["[medal-jura] in sub"])])
    (tmp_path / "sub").mkdir()
    (tmp_path / "project" / "build").mkdir(parents=True)
    outputs, names = run(transcript, tmp_path)
    assert names == {"medal-jura": "bold-fox"}
    assert outputs == [["Ran experiment(s): bold-fox"], ["[bold-fox] in sub"]]


def test_the_documented_transcripts_are_found():
    found = all_transcripts()
    assert {t.where.split(":")[0] for t in found} >= {
        "README.md", "docs/experiments.md", "docs/pipeline.md", "docs/results.md"}
    readme = [[c.line for c in t.commands] for t in found if t.where.startswith("README.md")]
    assert ["make demo"] in readme, readme  # the newcomer's path: the demo, then the workflow
    assert any(commands[:2] == ["dvc exp run -S lr=1e-4",
                                "dvc metrics diff --targets metrics/evaluate/metrics.json"]
               for commands in readme), readme


@pytest.mark.slow
def test_every_documented_transcript_reproduces():
    needs_shared(REAL_SAMPLE, "the shared photo sample")
    needs_shared(MOBILENET_WEIGHTS, "the shared MobileNet weights")
    result = subprocess.run([sys.executable, "-m", "scripts.transcripts"], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
