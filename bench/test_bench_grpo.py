"""GRPO side by side: ftib's ``grpo`` stage vs TRL's ``GRPOTrainer`` (pytest-benchmark).

The same run through both: the ``tiny-qwen3`` preset (full fine-tuning, float32, CPU),
FTibWorld's Tibetan→Chinese translation prompts (``ftibworld:tiny``) in the same chat
template, G = 4 completions per prompt and 4 prompts per optimiser step (16 completions),
the same sampling (temperature 0.8, top-p 0.9, no top-k, at most 32 new tokens, stop on
``<|im_end|>``), the same loss (``dapo``, clip 0.2, beta 0 so neither builds a reference
model, ``num_iterations`` 1, group-scaled advantages), AdamW with the same learning rate,
constant schedule and gradient clipping, no gradient checkpointing (TRL's default is on;
turned off to match ftib), metrics logged every step by both, and the same reward:
ftib's ``language`` reward (share of Han letters, ``mode: fraction``), which TRL calls
through a thin wrapper. Every case runs in a **fresh subprocess** with the same number of
torch threads (``FTIB_BENCH_THREADS``, default this process's), so its peak RSS is its
own. Cases: ``trl``; ``ftib`` (the stage as configured by default); ``ftib_generate``
(the stage with ``sampler: transformers``, i.e. rollouts through ``model.generate`` as
TRL does: shows how much of the gap is the sampler); each at two shapes, ``g4`` (the
above) and ``g8`` (G = 8, at most 64 new tokens).

* ``samples_per_s`` — completions per second over optimiser steps 2..N (the first step,
  with one-off warm-up costs, is reported separately as ``first_step_s``), clocked by
  the same wall clock at the end of every step (ftib: its metrics sink; TRL: a
  ``TrainerCallback.on_step_end``);
* ``peak_rss_mib`` — the subprocess's peak resident set (VmHWM: imports, model, data,
  training); ``peak_extra_mib`` — that peak minus the RSS after importing torch,
  transformers and the framework;
* every case records a median time breakdown per phase (``median/generation_s``,
  ``reward_s``, ``ref_logps_s``, ``loss_fwd_s`` ...): ftib's from the stage's own metrics,
  TRL's by clocking its trainer's ``_generate``, ``_calculate_rewards``,
  ``_generate_and_score_completions`` and ``compute_loss`` (``other_s``: backward,
  optimizer and the rest of the step);
* ftib cases also record,
  after the ``trl`` case of the same session, ``speedup_vs_trl`` and
  ``peak_rss_ratio_vs_trl``; every case records ``load_avg_1m``.

Goal (issues 8 and 19): ftib >= 3x TRL's completions/s at no more peak memory, at both shapes. ::

    python -m pytest bench/test_bench_grpo.py --benchmark-only -s
    FTIB_BENCH_THREADS=1 python -m pytest bench/test_bench_grpo.py --benchmark-only -s
    python -P bench/test_bench_grpo.py --measure-memory '{"impl": "ftib", "steps": 12}'   # one case, JSON out

The pytest-benchmark time of a case is one whole subprocess (imports, set-up and N steps);
read ``extra_info`` for the throughput. Under ``--benchmark-disable`` (the CI smoke run)
each case runs 2 steps once, untimed. TRL is a dev/bench dependency only: the ``trl``
case skips when ``trl`` does not import.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from ftib.bench._kernel_bench import _status_kib, extra_info, peak_in_subprocess

# One home for the settings both implementations get.
SETTINGS = {
    "model": "tiny-qwen3",
    "data": "ftibworld:tiny",
    "task": "translation",
    "group_size": 4,
    "prompts_per_step": 4,
    "max_new_tokens": 32,
    "temperature": 0.8,
    "top_p": 0.9,
    "top_k": 0,
    "lr": 1e-5,
    "beta": 0.0,
    "epsilon": 0.2,
    "loss_type": "dapo",
    "max_grad_norm": 1.0,
    "seed": 0,
}
#: The two shapes: the default (G = 4, 32 new tokens) and issue 19's longer case (G = 8,
#: 64 new tokens: 32 completions per step, twice as long).
SHAPES = {"g4": {}, "g8": {"group_size": 8, "max_new_tokens": 64}}
LANGUAGE = {"scripts": ["han"], "mode": "fraction"}
TIMED_STEPS = 12
SMOKE_STEPS = 2
_RESULTS: dict[tuple[str, str], dict] = {}


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except Exception:  # an optional dependency: any import failure means "not usable"
        return False
    return True


def _prompts(s: dict) -> list[dict]:
    from ftib.data.prompts import read_prompts

    return read_prompts(s["data"], (s["task"],))


def _summary(marks: list[float], per_step: int, first_step_s: float) -> dict:
    steady = marks[-1] - marks[0] if len(marks) > 1 else float("nan")
    n = len(marks) - 1
    return {"steps": len(marks), "completions_per_step": per_step, "first_step_s": first_step_s,
            "steady_s": steady, "samples_per_s": n * per_step / steady if n > 0 else None}


# ---------------------------------------------------------------------------------------
# The two implementations; each runs in its own process (``--measure-memory``).
# ---------------------------------------------------------------------------------------
def run_ftib(s: dict, steps: int, work: Path, sampler: str = "ftib") -> dict:
    from ftib.core.config import build
    from ftib.core.interfaces import RunContext
    from ftib.core.pipeline import seed_everything
    from ftib.core.rundir import MetricsSink
    from ftib.stages.grpo import GRPOStage

    rss_imports = _status_kib("VmRSS") / 1024
    marks: list[float] = []

    class ClockSink(MetricsSink):
        def log(self, step, values):
            marks.append(time.perf_counter())
            super().log(step, values)

    cfg = build(GRPOStage.Config, {
        "data": s["data"], "tasks": [s["task"]], "group_size": s["group_size"],
        "max_new_tokens": s["max_new_tokens"], "temperature": s["temperature"], "top_p": s["top_p"],
        "top_k": s["top_k"], "sampler": sampler, "beta": s["beta"], "epsilon_low": s["epsilon"],
        "loss_type": s["loss_type"],
        "scale_rewards": "group", "rewards": [{"name": "language", "weight": 1.0, "config": LANGUAGE}],
        "train": {"max_steps": steps, "batch_size": s["prompts_per_step"], "lr": s["lr"], "schedule": "constant",
                  "warmup_steps": 0, "max_grad_norm": s["max_grad_norm"], "log_every": 1},
    }, where="bench")
    sink = ClockSink(work / "metrics.jsonl", scope={"stage": "grpo"})
    ctx = RunContext(run_dir=work, work_dir=work / "stages" / "grpo", seed=s["seed"], device="cpu",
                     dtype="float32", model_source=s["model"], metrics=sink, run_id="bench-grpo")
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(s["seed"])
    GRPOStage(cfg).run(ctx)
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    out = _summary(marks, s["prompts_per_step"] * s["group_size"], rows[0]["step_time_s"])
    out["rss_after_imports_mib"] = rss_imports
    out["completion_len_mean"] = sum(r["completion_len_mean"] for r in rows) / len(rows)
    out["reward_mean"] = sum(r["reward_mean"] for r in rows) / len(rows)
    # Where ftib's steps go (medians over steps 2..N; the stage's own time breakdown).
    tail = rows[1:] or rows
    for key in ("step_time_s", "time/generation_s", "time/reward_s", "time/ref_logps_s", "time/loss_fwd_s",
                "time/forward_s", "time/backward_s", "time/optimizer_s", "data_time_s"):
        vals = sorted(r[key] for r in tail if key in r)
        if vals:
            out["median/" + key.removeprefix("time/")] = vals[len(vals) // 2]
    return out


def _language_reward_for_trl():
    """ftib's language reward as a TRL reward function (same scores, per-item target)."""
    from ftib.core.config import build
    from ftib.stages.rewards import LanguageReward

    reward = LanguageReward(build(LanguageReward.Config, LANGUAGE, where="language"))

    def language(prompts, completions, reference, target_scripts, task, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        meta = [{"target_scripts": t, "task": k} for t, k in zip(target_scripts, task)]
        return reward(users, texts, list(reference), meta).tolist()

    return language


def run_trl(s: dict, steps: int, work: Path) -> dict:
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from ftib.models.presets import preset_dir

    rss_imports = _status_kib("VmRSS") / 1024
    marks: list[float] = []
    begin: list[float] = []

    # TRL's own phases, clocked by wrapping its trainer's methods on the instance (TRL 1.16
    # names: ``_generate`` = rollouts, ``_calculate_rewards`` = rewards, both inside
    # ``_generate_and_score_completions``, which also computes old/reference log-probs and
    # advantages; ``compute_loss`` = the loss forward). Summed per optimiser step.
    phase_names = ("generation_s", "reward_s", "score_total_s", "loss_fwd_s")
    current = dict.fromkeys(phase_names, 0.0)
    per_step: list[dict[str, float]] = []

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                current[name] += time.perf_counter() - t0
        return wrapper

    class Clock(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())
            per_step.append(dict(current))
            current.update(dict.fromkeys(phase_names, 0.0))

    path = preset_dir(s["model"])
    tok = transformers.AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    transformers.set_seed(s["seed"])
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [{"prompt": [{"role": "user", "content": p["prompt"]}], "reference": p["reference"],
             "target_scripts": p["target_scripts"], "task": p["task"]} for p in _prompts(s)]
    G, B = s["group_size"], s["prompts_per_step"]
    args = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, bf16=False, fp16=False, report_to="none",
        logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=s["seed"],
        per_device_train_batch_size=B * G, gradient_accumulation_steps=1, num_generations=G,
        max_completion_length=s["max_new_tokens"], max_steps=steps, learning_rate=s["lr"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=s["max_grad_norm"],
        optim="adamw_torch", beta=s["beta"], num_iterations=1, epsilon=s["epsilon"], loss_type=s["loss_type"],
        scale_rewards="group", temperature=s["temperature"], top_p=s["top_p"], top_k=s["top_k"],
        log_completions=False, gradient_checkpointing=False,  # TRL's default is on; ftib's off
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[_language_reward_for_trl()], args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Clock()])
    for name, method in (("generation_s", "_generate"), ("reward_s", "_calculate_rewards"),
                         ("score_total_s", "_generate_and_score_completions"), ("loss_fwd_s", "compute_loss")):
        setattr(trainer, method, timed(name, getattr(trainer, method)))
    trainer.train()
    out = _summary(marks, B * G, marks[0] - begin[0])
    out["rss_after_imports_mib"] = rss_imports
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    if logs:
        out["completion_len_mean"] = sum(h["completions/mean_length"] for h in logs) / len(logs)
        out["reward_mean"] = sum(h["reward"] for h in logs) / len(logs)
    # Medians over steps 2..N, the same phases as ftib's breakdown: ref_logps_s = the rest
    # of scoring (old/reference log-probs, advantages); other_s = backward, optimizer and
    # everything else in the step.
    steps_s = [b - a for a, b in zip(marks, marks[1:])]
    tail = list(zip(steps_s, per_step[1:]))
    if tail:
        def median(vals):
            vals = sorted(vals)
            return vals[len(vals) // 2]

        out["median/step_time_s"] = median([t for t, _ in tail])
        out["median/generation_s"] = median([p["generation_s"] for _, p in tail])
        out["median/reward_s"] = median([p["reward_s"] for _, p in tail])
        out["median/ref_logps_s"] = median([p["score_total_s"] - p["generation_s"] - p["reward_s"] for _, p in tail])
        out["median/loss_fwd_s"] = median([p["loss_fwd_s"] for _, p in tail])
        out["median/other_s"] = median([t - p["score_total_s"] - p["loss_fwd_s"] for t, p in tail])
    return out


def _measure_here(args: dict) -> dict:
    s = {**SETTINGS, **args.get("settings", {})}
    torch.set_num_threads(int(args.get("threads", torch.get_num_threads())))
    impl = args["impl"]
    with tempfile.TemporaryDirectory(prefix=f"bench-grpo-{impl}-") as tmp:
        if impl == "trl":
            out = run_trl(s, int(args["steps"]), Path(tmp))
        else:
            out = run_ftib(s, int(args["steps"]), Path(tmp), "transformers" if impl == "ftib_generate" else "ftib")
    out["peak_rss_mib"] = _status_kib("VmHWM") / 1024
    out["peak_extra_mib"] = out["peak_rss_mib"] - out["rss_after_imports_mib"]
    out["threads"] = torch.get_num_threads()
    return out


# ---------------------------------------------------------------------------------------
# The pytest-benchmark cases
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Build the preset and FTibWorld once, before either subprocess is timed."""
    os.environ.setdefault("FTIB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    from ftib.models.presets import preset_dir

    preset_dir(SETTINGS["model"])
    _prompts(SETTINGS)
    return os.environ["FTIB_CACHE_DIR"]


def bench_threads() -> int:
    """Torch threads of every subprocess: ``FTIB_BENCH_THREADS``, else this process's."""
    return int(os.environ.get("FTIB_BENCH_THREADS") or torch.get_num_threads())


# trl first: the ftib cases record their ratios to it (per shape).
@pytest.mark.parametrize("impl", ["trl", "ftib", "ftib_generate"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_grpo_vs_trl(benchmark, cache, shape, impl):
    if impl == "trl" and not trl_available():
        pytest.skip("trl is not installed (pip install -e '.[dev]'); it is the baseline of this benchmark")
    if benchmark.disabled and shape != "g4":
        pytest.skip("the untimed smoke run checks the code path once, at the default shape")
    steps = SMOKE_STEPS if benchmark.disabled else TIMED_STEPS
    # The untimed smoke run needs no parallelism (and OpenMP spinning on a busy CI box costs minutes).
    args = {"impl": impl, "steps": steps, "threads": 1 if benchmark.disabled else bench_threads(),
            "settings": SHAPES[shape]}
    result: dict = {}

    def run():
        result.clear()
        result.update(peak_in_subprocess(Path(__file__), args))

    benchmark.pedantic(run, rounds=1, iterations=1)
    if "error" in result:
        pytest.fail(f"{impl} subprocess failed: {result['error']}")
    _RESULTS[(shape, impl)] = result
    more = {"load_avg_1m": os.getloadavg()[0]}
    trl = _RESULTS.get((shape, "trl"))
    if impl != "trl" and trl and result.get("samples_per_s") and trl.get("samples_per_s"):
        more.update(speedup_vs_trl=result["samples_per_s"] / trl["samples_per_s"],
                    peak_rss_ratio_vs_trl=result["peak_rss_mib"] / trl["peak_rss_mib"],
                    trl_samples_per_s=trl["samples_per_s"], trl_peak_rss_mib=trl["peak_rss_mib"])
    if impl == "trl":
        from importlib import metadata

        more["trl_version"] = metadata.version("trl")
    settings = {**SETTINGS, **SHAPES[shape]}
    extra_info(benchmark, impl=impl, mode="train", device=torch.device("cpu"), dtype=torch.float32,
               shapes={"group_size": settings["group_size"], "prompts_per_step": settings["prompts_per_step"],
                       "max_new_tokens": settings["max_new_tokens"]},
               settings=settings, **result, **more)
    print(f"\n{impl}: {json.dumps({**result, **more}, sort_keys=True)}")


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--measure-memory":
    print(json.dumps(_measure_here(json.loads(sys.argv[2]))))
