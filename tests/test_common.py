"""Tests of the shared modules without TensorFlow: params validation (stages/params.py),
one-line errors (stages/errors.py), atomic outputs (stages/files.py), hash specs."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.errors import StageError, run
from stages.files import atomic_output
from stages.params import PARAM_SPEC, load_params, parse_hash, validate_params

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "params.yaml"


@pytest.fixture
def params() -> dict[str, Any]:
    return load_params(SHIPPED)


def write_yaml(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params))
    return path


def test_shipped_params_validate(params: dict[str, Any]) -> None:
    assert set(params) == set(PARAM_SPEC)
    assert validate_params(params) is params


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", "2"),
        ("epochs", True),
        ("epochs", 2.0),
        ("epochs", 0),
        ("lr", "abc"),
        ("lr", True),
        ("lr", 0),
        ("lr", -1e-5),
        ("lr", float("inf")),
        ("lr", None),
        ("val_split", 0),
        ("val_split", 1),
        ("val_split", 1.5),
        ("dropout", 1.0),
        ("max_unreadable_fraction", 1),
        ("preprocessing", "imagenet"),
        ("weights_urls", []),
        ("weights_urls", "https://example.com/w.h5"),
        ("weights_urls", ["https://example.com/w.h5", 3]),
        ("weights_hash", "bcbd6486424b2319ff4ef7d526e38f63"),  # no algorithm
        ("weights_hash", "md5:"),
        ("weights_hash", "md5:not-hex-at-all-but-32-chars-xx"),
        ("weights_hash", "md5:bcbd6486424b2319ff4ef7d526e38f6"),  # 31 digits
        ("weights_hash", "sha256:bcbd6486424b2319ff4ef7d526e38f63"),  # an md5's length
        ("weights_hash", "crc99:bcbd6486424b2319ff4ef7d526e38f63"),
        ("weights_hash", "shake_128:bcbd6486424b2319ff4ef7d526e38f63"),  # no fixed size
    ],
)
def test_bad_value_names_the_key(params: dict[str, Any], key: str, value: Any) -> None:
    params[key] = value
    with pytest.raises(StageError, match=f"'{key}'"):
        validate_params(params)


def test_unknown_key_is_named(params: dict[str, Any]) -> None:
    params["learning_rate"] = 1e-3
    with pytest.raises(StageError, match="unknown key 'learning_rate'"):
        validate_params(params)


def test_unknown_keys_of_mixed_types(params: dict[str, Any]) -> None:
    params.update({1: "x", "zzz": "y"})  # sorting them must not raise a TypeError
    with pytest.raises(StageError, match="unknown key '1'"):
        validate_params(params)


def test_missing_key_is_named(params: dict[str, Any]) -> None:
    del params["seed"]
    with pytest.raises(StageError, match="missing key 'seed'"):
        validate_params(params)


def test_good_hash_and_empty_hash_pass(params: dict[str, Any]) -> None:
    for spec in ("", "MD5:BCBD6486424B2319FF4EF7D526E38F63", "sha256:" + "0f" * 32):
        params["weights_hash"] = spec
        validate_params(params)


def test_bare_exponent_loads_as_float(tmp_path: Path) -> None:
    # DVC writes `lr: 1e-4` (YAML 1.2); PyYAML's YAML 1.1 would read the string "1e-4".
    text = SHIPPED.read_text()
    text = text.replace("\nlr: 1.0e-5", "\nlr: 1e-4")
    text = text.replace("\nhead_lr: 1.0e-3", "\nhead_lr: 2E-3")
    assert "\nlr: 1e-4" in text and "\nhead_lr: 2E-3" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    loaded = load_params(path)
    assert loaded["lr"] == 1e-4 and isinstance(loaded["lr"], float)
    assert loaded["head_lr"] == 2e-3 and isinstance(loaded["head_lr"], float)


def test_bad_value_in_file_names_the_key(tmp_path: Path, params: dict[str, Any]) -> None:
    params["epochs"] = "2"
    with pytest.raises(StageError, match="'epochs' must be int, got str '2'"):
        load_params(write_yaml(tmp_path / "params.yaml", params))


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    # PyYAML would keep the second `lr:` and silently ignore an edit of the first.
    path = tmp_path / "params.yaml"
    path.write_text(SHIPPED.read_text() + "lr: 0.1\n")
    with pytest.raises(StageError, match='duplicate key "lr"'):
        load_params(path)


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"lr: [1e-4\nepochs: 2\n", "is not valid YAML"),
        (b"\tlr: 1\n", "is not valid YAML"),
        (b"\xff\xfe\x00binary\x00", "cannot read"),
        (b"just a sentence\n", "expected a mapping"),
        (b"", "expected a mapping"),
    ],
    ids=["unclosed-list", "tab", "binary", "scalar", "empty"],
)
def test_non_yaml_file(tmp_path: Path, content: bytes, hint: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(StageError, match=hint) as raised:
        load_params(path)
    assert "\n" not in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="not found: run the stage from the project root"):
        load_params(tmp_path / "params.yaml")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("stage", ["fetch_weights", "split_classes"])
def test_stage_fails_on_bad_param_before_any_work(
    tmp_path: Path, params: dict[str, Any], stage: str
) -> None:
    # A reachable-looking but closed mirror: had the stage tried it, the error would say so.
    params["weights_urls"] = [f"http://127.0.0.1:{closed_port()}/weights.h5"]
    params["epochs"] = "2"
    write_yaml(tmp_path / "params.yaml", params)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: params.yaml: 'epochs' must be int, got str '2'"
    ]
    assert result.stdout == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def test_run_prints_one_line_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> None:
        raise StageError("first line\nsecond line")

    with pytest.raises(SystemExit) as exited:
        run(main)
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: first line second line\n"


# --- atomic_output ------------------------------------------------------------


def test_atomic_file(tmp_path: Path) -> None:
    final = tmp_path / "models" / "model.keras"
    with atomic_output(final) as partial:
        # A sibling keeping the extension, which some writers insist on; not `final` itself.
        assert partial != final
        assert partial.parent == final.parent and partial.suffix == ".keras"
        assert not partial.exists()
        partial.write_text("new")
        assert not final.exists(), "the output appeared before the block ended"
    assert final.read_text() == "new"
    assert list(final.parent.iterdir()) == [final]


def test_atomic_file_replaces_the_earlier_one_only_at_the_end(tmp_path: Path) -> None:
    final = tmp_path / "model.keras"
    final.write_text("earlier")
    with atomic_output(final) as partial:
        assert partial != final
        partial.write_text("new")
        # A crash now (a kill, a power cut: no exception to clean up after) leaves the
        # earlier output whole.
        assert final.read_text() == "earlier"
    assert final.read_text() == "new"
    assert list(tmp_path.iterdir()) == [final]


def test_atomic_folder_replaces_the_old_one(tmp_path: Path) -> None:
    final = tmp_path / "data" / "train"
    (final / "stale").mkdir(parents=True)
    (final / "stale" / "old.jpg").write_text("old")
    with atomic_output(final) as partial:
        assert partial != final
        (partial / "cat").mkdir(parents=True)
        (partial / "cat" / "new.jpg").write_text("new")
        assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == [
            "stale", "stale/old.jpg"]
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == ["cat", "cat/new.jpg"]
    assert list(final.parent.iterdir()) == [final]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_atomic_failure_leaves_nothing(tmp_path: Path, kind: str) -> None:
    final = tmp_path / "out" / "result.h5"
    with pytest.raises(RuntimeError, match="boom"), atomic_output(final) as partial:
        if kind == "file":
            partial.write_bytes(b"half")
        else:
            (partial / "sub").mkdir(parents=True)
            (partial / "sub" / "x").write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(final.parent.iterdir()) == []


def test_atomic_failure_keeps_the_earlier_output(tmp_path: Path) -> None:
    final = tmp_path / "result.json"
    final.write_text("earlier")
    with pytest.raises(StageError), atomic_output(final) as partial:
        partial.write_text("half")
        raise StageError("failed")
    assert final.read_text() == "earlier"
    assert list(tmp_path.iterdir()) == [final]


# --- hashes -------------------------------------------------------------------


def test_parse_hash_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert parse_hash(f"SHA256:{digest.upper()}") == ("sha256", digest)
    algorithm, expected = parse_hash(f"md5:{hashlib.md5(b'weights').hexdigest()}")
    assert (algorithm, expected) == ("md5", hashlib.md5(b"weights").hexdigest())


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("md5", "must look like"),
        ("nope:abcd", "unknown hash algorithm 'nope'"),
        ("md5:abcd", "32 hex digits"),
    ],
)
def test_parse_hash_refuses(spec: str, hint: str) -> None:
    with pytest.raises(StageError, match=hint):
        parse_hash(spec)
