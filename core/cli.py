"""The ``ftib`` command line.

Built-in subcommands: ``run`` and ``list``. More subcommands arrive through the
``ftib.commands`` entry-point group: each entry point is a callable
``register(subparsers)`` that adds one ``argparse`` subparser and sets
``func=handler`` on it (``handler(args) -> int``).

Errors: :func:`main` is the one place user errors become messages. ftib's own errors,
configuration and YAML errors, Pillow's decompression-bomb refusal, damaged checkpoint
files and missing or unreadable files print one line ``ftib: error: ...`` (naming the
file or key) and exit with status 2; ``FTIB_DEBUG=1`` prints the traceback as well.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from importlib import metadata, resources
from pathlib import Path

from ftib.core.errors import FtibError
from ftib.core.registry import COMMANDS, GROUPS, Registry

log = logging.getLogger("ftib")

DEFAULT_RECIPE = "tiny.yaml"

RUN_EPILOG = """\
overrides:
  Any recipe value can be changed with KEY=VALUE after the config, using dots to
  walk the recipe (the 'config' level of a stage or evaluator is implicit):
    ftib run configs/tiny.yaml stages.sft.lr=1e-4 run.seed=3
    ftib run model=/models/Qwen3-VL-8B-Instruct evaluators.pope.limit=200
  Values are read as YAML scalars or lists (true, 3, 1.0e-4, [a, b]). An unknown key,
  a wrong type or a missing file stops the run before any work, naming the key.

  Options (--run-dir, --force ...) may come before, between or after the overrides.

resume:
  Running the same command again on the same --run-dir skips completed stages and
  evaluations and resumes an interrupted stage from its last intact step checkpoint.
  Changing an evaluator or a later stage recomputes only those entries; a change that
  leaves no trained stage reusable is refused unless --force. One ftib run holds a
  run directory at a time.

errors:
  A user error prints one line naming the file or key and exits with status 2;
  FTIB_DEBUG=1 also prints the traceback.
"""


def packaged_recipe(name: str = DEFAULT_RECIPE) -> Path:
    """Path of a recipe shipped in ``configs/`` (installed as ``ftib.configs``)."""
    ref = resources.files("ftib.configs") / name
    path = Path(str(ref))
    if not path.is_file():
        raise FtibError(f"packaged recipe {name!r} is missing from the installation ({path})")
    return path


def recipe_and_overrides(config: str | None, overrides: list[str]) -> tuple[Path, list[str]]:
    """The recipe path and overrides of a ``[config] [KEY=VALUE ...]`` command line
    (``ftib run``, ``ftib profile``): a first positional that looks like an override and
    is not a file belongs to the overrides; no recipe means the packaged tiny one."""
    overrides = list(overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)
        config = None
    return (Path(config) if config else packaged_recipe()), overrides


def _version() -> str:
    try:
        return metadata.version("ftib")
    except metadata.PackageNotFoundError:
        return "unknown"


def cmd_run(args: argparse.Namespace) -> int:
    from ftib.core.pipeline import Pipeline
    from ftib.core.recipe import load_recipe

    path, overrides = recipe_and_overrides(args.config, args.overrides)
    recipe = load_recipe(path, overrides)
    _preflight(recipe)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / path.stem
    pipeline = Pipeline(recipe, run_dir, force=args.force, progress=not args.no_progress)
    manifest = pipeline.run()
    if pipeline.dist.is_main:  # under torchrun, one summary
        _print_summary(manifest, run_dir)
        if manifest.get("evals"):
            # The report lives with the evaluators; the kernel asks for it by hook name.
            write_run_report = Registry().hook("run_report")
            if write_run_report is None:
                log.warning("no 'run_report' hook is installed; no report.md written")
            else:
                written = write_run_report(run_dir)
                print(f"report: {written['markdown']}")
    return 0


def _preflight(recipe) -> None:
    """Checks that need the model's sizes (context length, rollout memory), before any
    work; the model library lives outside the kernel, so the CLI wires it in."""
    from ftib.core.recipe import check_limits

    model_limits = Registry().hook("model_limits")
    if model_limits is None:
        log.warning("no 'model_limits' hook is installed; lengths are not checked against the model")
        return
    check_limits(recipe, model_limits(recipe.model.name_or_path, recipe.model.preset_overrides))


def _print_summary(manifest: dict, run_dir: Path) -> None:
    rows = []
    for sid, rec in manifest.get("stages", {}).items():
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in list((rec.get("metrics") or {}).items())[:4])
        rows.append(("stage", sid, rec.get("status", "?"), _fmt(rec.get("seconds")), metrics))
    for key, rec in manifest.get("evals", {}).items():
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in list((rec.get("metrics") or {}).items())[:4])
        rows.append(("eval", key, rec.get("status", "?"), _fmt(rec.get("seconds")), metrics))
    print(f"run directory: {run_dir}")
    if manifest.get("recomputed"):
        print(f"recomputed (configuration changed): {', '.join(manifest['recomputed'])}")
    if not rows:
        print("(the recipe lists no stages or evaluators)")
        return
    header = ("kind", "id", "status", "seconds", "metrics")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def cmd_list(args: argparse.Namespace) -> int:
    reg = Registry()
    groups = [args.group] if args.group else list(GROUPS)
    for group in groups:
        specs = reg.specs(group)
        print(f"{group}:")
        if not specs:
            print("  (none installed)")
        for name in sorted(specs):
            s = specs[name]
            tag = "built-in" if s.builtin else "plugin"
            print(f"  {name:<20} {s.value:<45} {s.dist} {s.dist_version} [{tag}]")
    if not reg.autoload:
        print("(FTIB_DISABLE_PLUGIN_AUTOLOAD is set: third-party plugins are not listed)")
    return 0


def build_parser(registry: Registry | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftib",
        description="Adapt LLMs and vision-language models to Tibetan: CPT, alignment, "
        "SFT, GRPO with semantic rewards, and FTibBench.",
    )
    parser.add_argument("--version", action="version", version=f"ftib {_version()}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run a recipe (default: the embedded tiny recipe)",
        description="Run the stages and evaluators of a recipe in a run directory.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML recipe (default: the packaged configs/tiny.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. stages.sft.lr=1e-4")
    p.add_argument("--run-dir", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--force", action="store_true",
                   help="reuse a run directory made by a different configuration (its manifest is archived)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="list installed plugins by group",
                       description="List stages, evaluators, rewards and commands with their providers.")
    p.add_argument("group", nargs="?", choices=GROUPS, help="only this group")
    p.set_defaults(func=cmd_list)

    reg = registry or Registry()
    for name in reg.names(COMMANDS):
        # A broken command plugin must not take `ftib run` down with it: say so loudly.
        try:
            register = reg.load(COMMANDS, name)
            register(sub)
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code
            print(f"ftib: warning: command plugin {name!r} is unavailable: {exc}", file=sys.stderr)
    return parser


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an exception caused by the user's input (recipe, data,
    run directory), or ``None`` for anything else (a bug, which keeps its traceback)."""
    if isinstance(exc, FtibError):
        return str(exc)
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
    if "PIL.Image.DecompressionBombError" in names:
        return f"image refused by Pillow ({exc})"
    if "yaml.error.YAMLError" in names:
        return f"invalid YAML: {exc}"
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
    return None


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; ``ftib run`` takes its KEY=VALUE overrides anywhere among its
    options (``ftib run r.yaml --run-dir X a.b=1``), which plain argparse refuses once
    the positionals are consumed."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [x for x in extra if x.startswith("-") or "=" not in x]
        if getattr(args, "command", None) != "run" or stray:
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = os.environ.get("FTIB_DEBUG", "") not in ("", "0")
    try:
        parser = build_parser()
        args = _parse(parser, argv)
        logging.basicConfig(level=getattr(logging, args.log_level),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ftib: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one top-level handler
        message = user_error(exc)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        message = " ".join(message.split("\n"))
        print(f"ftib: error: {message}" + ("" if debug else " (FTIB_DEBUG=1 shows the traceback)"),
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
