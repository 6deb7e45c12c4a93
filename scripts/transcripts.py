"""The console transcripts of the README and docs, run and compared with what they show
(`make transcripts`; `make transcripts ARGS=--update` rewrites them from a real run).

A transcript is a ```console block right after a `<!-- transcript: demo -->` line. Its
`$ ` lines run, in order, in one bash shell, in a fresh copy of the demo project (what `make
demo` builds: the first run of the DAG committed), so every transcript starts from the same
place and can be read on its own; `<!-- transcript: clone -->` runs them in the root of a
fresh copy of the project instead (`make demo` itself). The lines after a command are its
output (stdout and stderr together); a `...` line stands for any number of lines. What
must vary between runs is normalised on both sides before comparing: durations and rates,
clock times, commit hashes, experiment names (paired in order of appearance, and put into
later commands, as a user would type them), runs of spaces and table rules. Numbers must
agree within the tolerance the marker states (`<!-- transcript: demo, tolerance 0.01 -->`:
relative), by default 1e-3: the same machine type gives the same digits, another CPU may
move the last.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
MARKER = re.compile(r"<!-- transcript: (?:(?P<context>[\w-]+)(?:, tolerance (?P<tol>[\d.e-]+))?"
                    r"|not checked: (?P<reason>.+)) -->")
CONTEXTS = ("demo", "clone")  # see the module docstring
DEFAULT_TOLERANCE = 1e-3
ANY_LINES = "..."
PROMPT = "$ "
# Between two commands' output: a line no command prints.
SEPARATOR = "@@transcript-command-done@@"

# What varies from run to run, replaced on both sides (order matters: rates before times).
VARYING = (
    (re.compile(r"\b[\d,]+(?:\.\d+)? (?:images|B|kB|MB)/s\b"), "<rate>"),
    (re.compile(r"\b\d+m\d+(?:\.\d+)?s\b"), "<time>"),  # `time`'s real 0m6.024s
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:ms|us|µs|s)(?:/step)?\b"), "<time>"),
    (re.compile(r"\b\d{1,2}:\d\d(?::\d\d)? ?[AP]M\b"), "<clock>"),
    (re.compile(r"(?<![\w.])[0-9a-f]{7}(?![\w.])"), "<hash>"),
    (re.compile(r"─+"), "─"),
)
# Where DVC prints an experiment's generated name.
EXPERIMENT_NAME = re.compile(
    r"\[([a-z]+-[a-z]+)\]|experiment\(s\): ([a-z]+-[a-z]+)|experiment '([a-z]+-[a-z]+)'")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


@dataclass
class Command:
    line: str  # as shown, without the prompt
    expected: list[str]


@dataclass
class Transcript:
    document: Path
    line: int  # of the ```console line, 1-based
    context: str
    tolerance: float
    commands: list[Command] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def find_transcripts(document: Path) -> Iterator[Transcript]:
    """Every ```console block of `document` with the marker above it; a block without
    one is an error: each transcript is checked."""
    lines = document.read_text(encoding="utf-8").splitlines()
    for number, text in enumerate(lines):
        if text.strip() != "```console":
            continue
        marker = MARKER.fullmatch(lines[number - 1].strip()) if number else None
        where = f"{document.relative_to(ROOT)}:{number + 1}"
        if marker is not None and marker["reason"]:
            continue  # recorded by hand, the reason said where it stands
        if marker is None or marker["context"] not in CONTEXTS:
            raise SystemExit(f"error: {where}: a console block needs a `<!-- transcript: "
                             f"{'|'.join(CONTEXTS)} -->` line above it (or `<!-- transcript: "
                             "not checked: WHY -->`)")
        transcript = Transcript(document, number + 1, marker["context"],
                                float(marker["tol"] or DEFAULT_TOLERANCE))
        for body in lines[number + 1:]:
            if body.strip() == "```":
                break
            if body.startswith(PROMPT):
                transcript.commands.append(Command(body[len(PROMPT):], []))
            elif not transcript.commands:
                raise SystemExit(f"error: {where}: output before the first `$ ` command")
            else:
                transcript.commands[-1].expected.append(body)
        yield transcript


def normalise(line: str) -> str:
    for pattern, replacement in VARYING:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def same_line(expected: str, actual: str, tolerance: float) -> bool:
    """Equal once normalised, numbers within `tolerance` (relative)."""
    expected, actual = normalise(expected), normalise(actual)
    if NUMBER.split(expected) != NUMBER.split(actual):
        return False
    for shown, got in zip(NUMBER.findall(expected), NUMBER.findall(actual), strict=True):
        a, b = float(shown.replace(",", "")), float(got.replace(",", ""))
        if abs(a - b) > tolerance * max(abs(a), abs(b)):
            return False
    return True


def match(expected: list[str], actual: list[str], tolerance: float) -> list[int] | None:
    """For each expected line, the index of the actual line it matched (-1 for `...`), or
    None if the output does not match. Blank lines are ignored on both sides."""
    wanted = [line for line in expected if line.strip()]
    got = [line for line in actual if line.strip()]
    memo: dict[tuple[int, int], list[int] | None] = {}

    def solve(i: int, j: int) -> list[int] | None:
        if (i, j) not in memo:
            if i == len(wanted):
                result = [] if j == len(got) else None
            elif wanted[i].strip() == ANY_LINES:
                result = None
                for k in range(j, len(got) + 1):
                    rest = solve(i + 1, k)
                    if rest is not None:
                        result = [-1, *rest]
                        break
            elif j < len(got) and same_line(wanted[i], got[j], tolerance):
                rest = solve(i + 1, j + 1)
                result = None if rest is None else [j, *rest]
            else:
                result = None
            memo[i, j] = result
        return memo[i, j]

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * (len(wanted) + len(got)) + 100))
    return solve(0, 0)


def experiment_names(lines: list[str]) -> list[str]:
    """The experiment names in `lines`, each once, in order of appearance."""
    names: list[str] = []
    for line in lines:
        for found in EXPERIMENT_NAME.finditer(line):
            name = next(group for group in found.groups() if group)
            if name not in names:
                names.append(name)
    return names


def rename(text: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    return text


def layout(folder: Path) -> Path:
    """project/ under `folder`, with a .venv (the real one) inside and shared/ beside it,
    as the project root has them."""
    (folder / "project").mkdir(parents=True)
    (folder / "project" / ".venv").symlink_to(ROOT / ".venv")
    (folder / "shared").symlink_to(ROOT.parent / "shared")
    return folder / "project"


def fresh_clone(folder: Path) -> Path:
    """The project as a fresh clone has it (its files, committed), at `folder`/project."""
    from scripts.demo import copy_project

    return copy_project(layout(folder))


def demo_baseline(folder: Path) -> Path:
    """The demo project as `make demo` leaves it (its first run committed), at
    `folder`/project/build/demo: the depth of build/demo, so the docs' relative paths
    (../../.venv, ../../../shared) hold."""
    from scripts.demo import build_demo

    demo = layout(folder) / "build" / "demo"
    build_demo(demo, output=subprocess.DEVNULL)
    return demo


def copy_demo(baseline: Path, folder: Path) -> Path:
    """A copy of the `baseline` demo under `folder` (cp -a keeps the hard links between
    DVC's cache and the workspace, and the times DVC's state database knows)."""
    copy = layout(folder) / "build" / "demo"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(baseline), str(copy)], check=True)
    return copy


def shell_env(project: Path) -> dict[str, str]:
    """A user's shell with `.venv` activated, as `make demo` tells them to."""
    venv = ROOT / ".venv"  # what the copies' .venv links to
    # Not what a user's shell has: pytest's, and make's when this runs under make (a make
    # in a transcript would say "make[1]: Entering directory").
    # make also exports its command line's variables (`make transcripts ARGS=--update`
    # would hand ARGS to a transcript's `make exps`): MAKEFLAGS names them after " -- ".
    words = os.environ.get("MAKEFLAGS", "").split()
    overrides = {word.partition("=")[0] for word in words[words.index("--") + 1:]
                 if "=" in word} if "--" in words else set()
    env = {key: value for key, value in os.environ.items()
           if key not in overrides
           and not key.startswith(("PYTEST", "COV_", "VIRTUAL_ENV", "MAKE", "MFLAGS"))}
    return {**env, "PATH": f"{venv / 'bin'}:{env['PATH']}", "VIRTUAL_ENV": str(venv),
            "DVC_NO_ANALYTICS": "1", "TERM": "dumb", "NO_COLOR": "1", "COLUMNS": "120"}


def run(transcript: Transcript, project: Path) -> tuple[list[list[str]], dict[str, str]]:
    """Run the transcript's commands in one shell at `project`; each command's output
    lines, and the experiment names paired (shown -> got). A command naming an
    experiment is run with the name this run gave it."""
    outputs: list[list[str]] = []
    names: dict[str, str] = {}
    # One command at a time, since a command may name an experiment an earlier one made.
    shell = subprocess.Popen(["bash", "--norc", "--noprofile"], cwd=project,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=shell_env(project))
    assert shell.stdin is not None and shell.stdout is not None
    try:
        for command in transcript.commands:
            shell.stdin.write(f"{rename(command.line, names)}\necho {SEPARATOR}\n")
            shell.stdin.flush()
            lines = []
            for line in shell.stdout:
                if line.rstrip("\n") == SEPARATOR:
                    break
                lines.append(line.rstrip("\n"))
            outputs.append(lines)
            shown, got = experiment_names(command.expected), experiment_names(lines)
            for old, new in zip([n for n in shown if n not in names],
                                [n for n in got if n not in names.values()], strict=False):
                names[old] = new
    finally:
        shell.stdin.close()
        shell.wait(timeout=60)
    return outputs, names


def check(transcript: Transcript, project: Path) -> tuple[list[str], list[list[str]]]:
    """Run `transcript` at `project`: the mismatches (none: it reproduces), and each
    command's output, with the documented experiment names for the ones this run made."""
    outputs, names = run(transcript, project)
    back = {new: old for old, new in names.items()}
    outputs = [[rename(line, back).rstrip() for line in output] for output in outputs]
    problems = []
    for command, output in zip(transcript.commands, outputs, strict=True):
        if match(command.expected, output, transcript.tolerance) is None:
            problems.append(f"{transcript.where}: `$ {command.line}` printed:\n"
                            + "\n".join(f"    {line}" for line in output)
                            + "\n  documented:\n"
                            + "\n".join(f"    {line}" for line in command.expected))
    return problems, outputs


def updated_block(transcript: Transcript, outputs: list[list[str]]) -> list[str]:
    """The block's lines rewritten from a run: a command's output where it matched keeps
    its `...` lines (with the run's lines around them), else it is the whole output."""
    block = []
    for command, output in zip(transcript.commands, outputs, strict=True):
        block.append(PROMPT + command.line)
        aligned = match(command.expected, output, transcript.tolerance)
        if aligned is None:
            block += output
            continue
        got = [line for line in output if line.strip()]
        wanted = [line for line in command.expected if line.strip()]
        block += [ANY_LINES if index < 0 else got[index]
                  for index, _ in zip(aligned, wanted, strict=True)]
    return block


def update(document: Path, transcript: Transcript, outputs: list[list[str]]) -> None:
    lines = document.read_text(encoding="utf-8").splitlines()
    start = transcript.line  # the block's first line after ```console (0-based index)
    end = lines.index("```", start)
    lines[start:end] = updated_block(transcript, outputs)
    document.write_text("\n".join(lines) + "\n", encoding="utf-8")


def all_transcripts(only: str = "") -> list[Transcript]:
    return [transcript for document in DOCUMENTS for transcript in find_transcripts(document)
            if only in transcript.where]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true",
                        help="rewrite the transcripts from this run instead of failing")
    parser.add_argument("--only", default="", metavar="TEXT",
                        help="only the transcripts whose FILE:LINE contains TEXT")
    args = parser.parse_args()
    transcripts = all_transcripts(args.only)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="transcripts-") as scratch:
        baseline = None
        # Later blocks of a document first: updating one moves the line numbers below it.
        for number, transcript in sorted(enumerate(transcripts), key=lambda item: (
                str(item[1].document), -item[1].line)):
            folder = Path(scratch) / f"t{number}"
            if transcript.context == "clone":
                project = fresh_clone(folder)
            else:
                if baseline is None:
                    print("transcripts: building the demo project", flush=True)
                    baseline = demo_baseline(Path(scratch) / "baseline")
                project = copy_demo(baseline, folder)
            problems, outputs = check(transcript, project)
            if problems and args.update:
                update(transcript.document, transcript, outputs)
                print(f"transcripts: rewrote {transcript.where}", flush=True)
            elif problems:
                failures += 1
                print("\n".join(problems), flush=True)
            else:
                print(f"transcripts: {transcript.where} reproduces", flush=True)
    if failures:
        sys.exit(f"error: {failures} of {len(transcripts)} transcript(s) differ from a real "
                 "run: fix the code, or `make transcripts ARGS=--update` and review the diff")


if __name__ == "__main__":
    main()
