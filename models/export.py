"""``ftib export``: a stage's output as a plain Hugging Face directory.

``ftib export --merge RUN_DIR/stages/ID OUT`` writes the stage's model, merged, as a
directory that ``transformers`` loads with nothing from ftib: the weights
(``save_pretrained``, sharded safetensors), the tokenizer, and the base's own formats
(chat template, processor, video-processor and generation configs). When the stage
saved a peft adapter (``final/adapter``) the merge is redone from it exactly as a user
would: the adapter's base, resized to the adapter's recorded vocabulary
(``ftib.vocab_size``), ``PeftModel.from_pretrained`` then ``merge_and_unload``; otherwise
the stage's merged checkpoint is loaded and saved again. Without ``--merge`` the adapter
folder (adapter, tokenizer, README with the loading snippet) is exported as it is.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError
from ftib.models.chat import FORMAT_FILES

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "merges.txt", "added_tokens.json")


def _final(stage_dir: Path) -> Path:
    final = stage_dir / "final" if (stage_dir / "final").is_dir() else stage_dir
    if not (final / "config.json").is_file():
        raise FtibError(f"{stage_dir}: no finished checkpoint (expected {stage_dir / 'final' / 'config.json'}); "
                        "give RUN_DIR/stages/<id> of a completed stage")
    return final


def _auto(path: Path) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    return AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM


def _copy_formats(src: Path, out: Path) -> None:
    for name in (*_TOKENIZER_FILES, *FORMAT_FILES):
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)


def export(stage_dir: Path | str, out: Path | str, *, merge: bool = True) -> Path:
    """Export ``stage_dir`` (``RUN_DIR/stages/ID``) to ``out`` (see the module docstring).

    Raises:
        FtibError: no finished checkpoint, ``out`` exists and is not empty, or (without
            ``merge``) the stage saved no adapter.
    """
    stage_dir, out = Path(stage_dir), Path(out)
    final = _final(stage_dir)
    if out.exists() and any(out.iterdir()):
        raise FtibError(f"{out} exists and is not empty; export writes a fresh directory")
    adapter = final / "adapter"
    if not merge:
        if not (adapter / "adapter_config.json").is_file():
            raise FtibError(f"{final}: the stage saved no adapter (trainable.lora.save_adapter); use --merge")
        shutil.copytree(adapter, out, dirs_exist_ok=True)
        return out
    out.mkdir(parents=True, exist_ok=True)
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        conf = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        base_path = conf.get("base_model_name_or_path")
        if not base_path:
            raise FtibError(f"{adapter / 'adapter_config.json'}: no base_model_name_or_path")
        auto = _auto(Path(base_path) if Path(base_path).is_dir() else base_path)
        base = auto.from_pretrained(base_path, dtype="auto")
        vocab = (conf.get("ftib") or {}).get("vocab_size")
        if vocab is not None:
            base.resize_token_embeddings(int(vocab))
        model = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        model.save_pretrained(out)
        _copy_formats(adapter, out)
    else:
        model = _auto(final).from_pretrained(final, dtype="auto")
        model.save_pretrained(out)
    _copy_formats(final, out)  # the stage's own tokenizer and the base's formats win
    return out


def register(sub: Any) -> None:
    """The ``ftib export`` subcommand (entry point group ``ftib.commands``)."""
    p = sub.add_parser("export", help="write a stage's model as a plain Hugging Face directory",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("stage_dir", help="RUN_DIR/stages/<id> of a completed stage")
    p.add_argument("out", help="output directory (new or empty)")
    p.add_argument("--merge", action="store_true",
                   help="merge the adapter into its base (default: export the adapter folder only)")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    out = export(args.stage_dir, args.out, merge=args.merge)
    print(f"exported {args.stage_dir} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ftib.models.export [--merge] STAGE_DIR OUT`` (the same as ``ftib export``)."""
    parser = argparse.ArgumentParser(prog="ftib export")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", *(argv if argv is not None else __import__("sys").argv[1:])])
    try:
        return args.func(args)
    except FtibError as exc:
        print(f"ftib: error: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
