"""The shared loop under torchrun: 2 CPU processes on gloo against one process.

Covered: the toy task (ddp, fsdp2) and SFT on the tiny preset through ``ftib run``
(ddp; fsdp2 is marked slow) match one process with the same global batch; checkpoints
written by 2 ranks resume in 1 process (toy: ddp and fsdp2/DCP; SFT: through the
pipeline); GRPO rolls out per rank under ddp and refuses fsdp2; the preset and world are
built once in this process before any rank starts (``built_cache``).

Equivalence: 2 ranks x ``batch_size`` b sees, step for step, the samples of one process
with ``batch_size`` 2b (the global batch), so the losses agree up to float summation
order. Tolerances: relative 1e-5 on every step's loss (measured: < 1e-6 for the toy,
< 3e-7 for SFT); toy final weights within 1e-5; SFT final weights as a whole update,
``|w_2ranks - w_1proc| / |w_1proc - w_0| < 1e-3`` (measured ~1e-5), because Adam's
first steps are ~``lr * sign(g)`` and turn reordering noise on near-zero gradients into
single-weight differences of ~1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ftib.core import FtibError
from ftib.core import distributed as D
from ftib.core.interfaces import DistInfo, RunContext
from ftib.core.rundir import MetricsSink
from ftib.core.train import TrainConfig, Trainer, consolidate_checkpoint

HERE = Path(__file__).resolve().parent
WORKER = HERE / "dist_toy_worker.py"
RTOL = 1e-5
N_SAMPLES = 37  # 37 = 9 global micro-batches of 4 + 1: the 10th leaves rank 1 empty (weight 0)
STEPS, PER_RANK = 12, 2


def _toy():
    from test_train import TINY_LM  # noqa: PLC0415  (same folder; the toy task's source)

    ns: dict = {}
    exec(compile(TINY_LM, "tiny_lm_plugin", "exec"), ns)
    return ns["TinyTask"]


sys.path.insert(0, str(HERE))
from dist_toy_worker import FIXED_ROWS  # noqa: E402  (the rows the 2-rank run keeps fixed)


def torchrun(args: list[str], *, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def single_ctx(run_dir: Path, resume_from: Path | None = None, dist: DistInfo | None = None) -> RunContext:
    work = run_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    return RunContext(run_dir=run_dir, work_dir=work, seed=0, device="cpu", dtype="float32",
                      dist=dist or DistInfo(), model_source="none", resume_from=resume_from,
                      metrics=MetricsSink(run_dir / "metrics.jsonl"), run_id="dist-toy")


def toy_cfg(batch_size: int, distributed: str = "none") -> TrainConfig:
    return TrainConfig(max_steps=STEPS, batch_size=batch_size, lr=3e-2, warmup_steps=2, checkpoint_every=2,
                       keep_checkpoints=20, distributed=distributed)


def train_single(run_dir: Path, *, batch_size: int, resume_from: Path | None = None, distributed: str = "none"):
    torch.manual_seed(0)
    task = _toy()(n=N_SAMPLES, fixed_rows=FIXED_ROWS)
    task.model.drop.p = 0.0
    trainer = Trainer(task, toy_cfg(batch_size, distributed), single_ctx(run_dir, resume_from), progress=False)
    return trainer.train(), task


def assert_losses_close(a: list[float], b: list[float], what: str) -> None:
    assert len(a) == len(b), (what, len(a), len(b))
    rel = [abs(x - y) / abs(y) for x, y in zip(a, b)]
    assert max(rel) < RTOL, f"{what}: max relative loss difference {max(rel):.2e} at step {rel.index(max(rel))}"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process reference: batch_size 4 = the 2-rank global batch."""
    result, task = train_single(tmp_path_factory.mktemp("single"), batch_size=2 * PER_RANK)
    return result.losses, {k: v.detach().clone() for k, v in task.model.state_dict().items()}


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_toy_two_ranks_match_one_process_and_resume_on_one(mode, single, tmp_path):
    ref_losses, ref_state = single
    out = tmp_path / mode
    torchrun([str(WORKER), str(out), mode, str(STEPS), str(PER_RANK), str(N_SAMPLES)])
    losses = json.loads((out / "losses.json").read_text())
    assert_losses_close(losses, ref_losses, f"{mode} 2 ranks vs 1 process")
    final = torch.load(out / "work" / "final" / "model.pt", weights_only=True)
    for k, v in ref_state.items():
        torch.testing.assert_close(final[k], v, rtol=RTOL, atol=RTOL, msg=f"{mode}: {k}")
    # The fixed rows (zeroed on each rank's shard under fsdp2) did not move; the rest did.
    torch.manual_seed(0)
    init = _toy()(n=N_SAMPLES).model.emb.weight.detach()
    moved = (final["emb.weight"] - init).abs().amax(1) > 0
    assert not moved[FIXED_ROWS].any() and moved.sum() == init.shape[0] - len(FIXED_ROWS), moved
    step = out / "work" / "steps" / "step-000005"
    state = json.loads((step / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["global_batch"] == 2 * PER_RANK and state["distributed"] == mode
    assert (step / "rng-rank0.pt").is_file() and (step / "rng-rank1.pt").is_file()
    assert (step / "dcp").is_dir() == (mode == "fsdp2")
    if mode == "fsdp2":
        assert "cannot shard" in (out / "refusal.txt").read_text()
        # The last step checkpoint, consolidated without a process group, is the final model.
        full = torch.load(consolidate_checkpoint(out / "work" / "steps" / f"step-{STEPS - 1:06d}"),
                          weights_only=True)["model"]  # plain tensors: loads without pickled code
        assert set(full) == set(final)
        for k in final:
            assert torch.equal(full[k], final[k]), k

    # Resume the 2-rank checkpoint in ONE process with the same global batch (2 -> 1).
    resumed, _ = train_single(tmp_path / "resumed", batch_size=2 * PER_RANK, resume_from=step)
    assert resumed.resumed_from == 5
    assert resumed.losses[:6] == losses[:6]  # carried over from the checkpoint
    assert_losses_close(resumed.losses, ref_losses, f"{mode} 2 ranks -> 1 process resume")


def test_distributed_requests_without_torchrun(single, tmp_path):
    # ddp/fsdp2 asked for, one process: the single-process loop, bit for bit.
    result, _ = train_single(tmp_path / "ddp1", batch_size=2 * PER_RANK, distributed="ddp")
    assert result.losses == single[0]
    # A multi-process position with distributed: none is refused before any work.
    task = _toy()(n=N_SAMPLES)
    with pytest.raises(FtibError, match="rank 1 of 2 .*train.distributed is 'none'"):
        Trainer(task, toy_cfg(PER_RANK), single_ctx(tmp_path / "x", dist=DistInfo(rank=1, world_size=2)),
                progress=False)
    assert not D.is_initialized()


def test_shard_slice_covers_the_global_micro_batch():
    idx = list(range(10, 17))
    parts = [D.shard_slice(idx, r, 3) for r in range(3)]
    assert parts == [[10, 11, 12], [13, 14], [15, 16]]
    assert D.shard_slice([7], 1, 2) == []


# -- SFT on the tiny preset through `ftib run` -------------------------------------------------
SFT = {"data": "ftibworld:tiny", "max_records": 32}
TRAIN = {"max_steps": 4, "lr": 2.0e-3, "warmup_steps": 1, "checkpoint_every": 2, "keep_checkpoints": 5}


def _recipe(tmp_path: Path, name: str, **train) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny-qwen3-vl", "stages": [
        {"name": "sft", "config": {**SFT, "train": {**TRAIN, **train}}}]}))
    return path


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("stage") == "sft"]


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory):
    """Build the preset and the world once, in this process, before any rank starts."""
    cache = tmp_path_factory.mktemp("ftib-cache")
    old = os.environ.get("FTIB_CACHE_DIR")
    os.environ["FTIB_CACHE_DIR"] = str(cache)
    from ftib.data.sources import resolve
    from ftib.models.presets import preset_dir

    preset_dir("tiny-qwen3-vl")
    resolve("ftibworld:tiny", "sft/instructions.jsonl")
    resolve("ftibworld:tiny", "grpo/translation.jsonl")
    yield cache
    if old is None:
        os.environ.pop("FTIB_CACHE_DIR", None)
    else:
        os.environ["FTIB_CACHE_DIR"] = old


def _ftib_run(recipe: Path, run_dir: Path, *, ranks: int) -> None:
    args = ["-m", "ftib.core.cli", "run", str(recipe), "--run-dir", str(run_dir), "--no-progress"]
    if ranks == 2:
        torchrun(args)
    else:
        out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-4000:]


@pytest.fixture(scope="module")
def sft_single(built_cache, tmp_path_factory):
    """One process, batch_size 4 (the 2-rank global batch)."""
    tmp = tmp_path_factory.mktemp("sft-one")
    _ftib_run(_recipe(tmp, "one", batch_size=4), tmp / "run", ranks=1)
    return tmp / "run"


@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp2", marks=pytest.mark.slow)])
def test_sft_two_ranks_match_one_process(mode, sft_single, tmp_path):
    from ftib.models.bundle import load_bundle

    one, two = sft_single, tmp_path / "two"
    _ftib_run(_recipe(tmp_path, "two", batch_size=2, distributed=mode), two, ranks=2)
    assert_losses_close(_losses(two), _losses(one), f"sft {mode}")
    from ftib.models.presets import preset_dir

    base = load_bundle(str(preset_dir("tiny-qwen3-vl"))).model.state_dict()
    a = load_bundle(str(one / "stages/sft/final")).model.state_dict()
    b = load_bundle(str(two / "stages/sft/final")).model.state_dict()
    # Adam's first steps are ~lr * sign(g): reordering noise moves single weights by
    # ~1e-5, so compare the whole update: |w2 - w1| / |w1 - w0| (measured ~1e-5).
    diff = sum(float(((b[k] - a[k]).double() ** 2).sum()) for k in a) ** 0.5
    update = sum(float(((a[k] - base[k]).double() ** 2).sum()) for k in a) ** 0.5
    assert update > 0 and diff / update < 1e-3, (diff, update)
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "completed"
    assert manifest["stages"]["sft"]["metrics"]["world_size"] == 2.0


def test_sft_interrupted_on_two_ranks_resumes_on_one(built_cache, tmp_path):
    """A 2-rank DDP run stopped after step 1 continues in one process from that step
    checkpoint (the run directory as a SIGKILL after step-000001 would leave it)."""
    recipe = _recipe(tmp_path, "r", batch_size=2, grad_accum=1, distributed="ddp")
    run = tmp_path / "run"
    _ftib_run(recipe, run, ranks=2)
    first = _losses(run)
    # Rewind to the state of a job killed after writing step-000001.
    import shutil

    shutil.rmtree(run / "stages/sft/final")
    shutil.rmtree(run / "stages/sft/steps/step-000003")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["sft"]["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "metrics.jsonl").write_text("")
    out = subprocess.run([sys.executable, "-m", "ftib.core.cli", "run", str(recipe), "--run-dir", str(run),
                          "--no-progress"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resumes from" in out.stderr and "global batch of 2 samples" in out.stderr
    after = json.loads((run / "manifest.json").read_text())["stages"]["sft"]
    assert after["status"] == "completed" and "world_size" not in after["metrics"]
    assert after["metrics"]["first_loss"] == first[0]  # steps 0-1 come from the 2-rank checkpoint
    assert len(_losses(run)) == 2 and (run / "stages/sft/final/config.json").is_file()


def test_grpo_rolls_out_per_rank_under_ddp_and_refuses_fsdp2(built_cache, tmp_path):
    """GRPO on 2 ranks: each rank rolls out and scores its own prompts (whole groups),
    the logged step covers the global batch; fsdp2 is refused with the reason."""
    def recipe(mode: str) -> Path:
        path = tmp_path / f"grpo-{mode}.yaml"
        path.write_text(yaml.safe_dump({"model": "tiny-qwen3-vl", "stages": [{"name": "grpo", "config": {
            "data": "ftibworld:tiny", "group_size": 3, "max_new_tokens": 6,
            "rewards": [{"name": "language", "config": {"mode": "fraction", "scripts": ["han"]}}],
            "train": {"max_steps": 2, "batch_size": 2, "lr": 3.0e-3, "distributed": mode}}}]}))
        return path

    run = tmp_path / "ddp"
    torchrun(["-m", "ftib.core.cli", "run", str(recipe("ddp")), "--run-dir", str(run), "--no-progress"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]  # rank 0 alone writes metrics
    for r in rows:
        # 2 ranks x 2 prompts x G=3 completions per step
        assert round(r["samples_per_s"] * r["step_time_s"]) == 12 and r["world_size"] == 2
        assert 0.0 <= r["reward_mean"] <= 1.0 and "time/generation_s" in r
    assert (run / "stages/grpo/final/config.json").is_file()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "ftib.core.cli", "run", str(recipe("fsdp2")), "--run-dir", str(tmp_path / "f"), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode != 0
    assert "fsdp2 is not supported by _GRPOTask" in out.stderr
