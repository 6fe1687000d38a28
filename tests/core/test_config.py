from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from ftib.core import ConfigError, path_field
from ftib.core.config import build, file_fields, to_dict


@dataclass(frozen=True, kw_only=True)
class Inner:
    rank: int = 8
    alpha: float = 16.0


@dataclass(frozen=True, kw_only=True)
class Conf:
    lr: float = 1e-4
    steps: int = 10
    name: str = "x"
    mode: Literal["full", "lora"] = "lora"
    gate: float | None = None
    layers: tuple[int, ...] = (0, 1)
    lora: Inner = field(default_factory=Inner)
    data: Path | None = path_field(default=None, kind="file")
    out: Path = path_field(default=Path("out"), must_exist=False)


def test_builds_with_defaults_and_conversions(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text("{}\n")
    c = build(Conf, {"lr": "1e-4", "steps": 3, "layers": [2, 3], "lora": {"rank": 4}, "data": str(f)})
    assert c.lr == 1e-4 and c.layers == (2, 3) and c.lora == Inner(rank=4) and c.data == f
    assert to_dict(c)["data"] == str(f)
    assert file_fields(c, "stages.s") == {"stages.s.data": f}
    assert build(Conf, {"lr": 1}).lr == 1.0  # int is a float


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lrr": 0.1}, r"stages\.sft\.lrr: unknown key; did you mean 'lr'"),
        ({"steps": "ten"}, r"stages\.sft\.steps: expected int, got str 'ten'"),
        ({"steps": 2.5}, r"stages\.sft\.steps: expected int"),
        ({"steps": True}, r"stages\.sft\.steps: expected int"),
        ({"mode": "ful"}, r"stages\.sft\.mode: 'ful' is not allowed; did you mean 'full'"),
        ({"lora": {"rnak": 2}}, r"stages\.sft\.lora\.rnak: unknown key; did you mean 'rank'"),
        ({"layers": [1, "a"]}, r"stages\.sft\.layers\[1\]: expected int"),
        ({"gate": "high"}, r"stages\.sft\.gate: expected"),
        ({"data": "/no/such/file.jsonl"}, r"stages\.sft\.data: file '/no/such/file.jsonl' does not exist"),
        ([1, 2], r"stages\.sft: expected a mapping"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        build(Conf, data, where="stages.sft")


def test_required_key_and_directory_kind(tmp_path):
    @dataclass(frozen=True, kw_only=True)
    class Need:
        corpus: Path = path_field(kind="dir")

    with pytest.raises(ConfigError, match=r"cfg\.corpus: required key is missing"):
        build(Need, {}, where="cfg")
    f = tmp_path / "a.txt"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        build(Need, {"corpus": str(f)}, where="cfg")
    assert build(Need, {"corpus": str(tmp_path)}, where="cfg").corpus == tmp_path


def test_config_is_frozen():
    c = build(Conf, {})
    with pytest.raises(Exception):
        c.lr = 3.0  # type: ignore[misc]
