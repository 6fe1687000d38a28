"""The shared training loop: schedule, accumulation, resume, divergence, provenance."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from ftib.core import FtibError, RunDirError
from ftib.core.interfaces import RunContext
from ftib.core.rundir import MetricsSink
from ftib.core.train import ParamGroup, TrainConfig, Trainer, TrainingDiverged, lr_factor

TINY_LM = '''
import os, time
from dataclasses import dataclass, field

import torch

from ftib.core import Stage, StageResult
from ftib.core.train import LossOutput, ParamGroup, TrainConfig, Trainer


class TinyLM(torch.nn.Module):
    def __init__(self, vocab=17, dim=12):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.drop = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, ids):
        return self.head(self.drop(torch.tanh(self.mix(self.emb(ids)))))


class TinyTask:
    """Next-token prediction on seeded random sequences of varying length (padding -100)."""

    def __init__(self, n=40, seed=0, fail_at=None, freeze_emb=False, emb_scale=1.0, fixed_rows=None):
        torch.manual_seed(seed)
        self.model = TinyLM()
        g = torch.Generator().manual_seed(seed + 1)
        self.samples = [torch.randint(0, 17, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g)
                        for _ in range(n)]
        self.fail_at, self.calls, self.freeze_emb, self.emb_scale = fail_at, 0, freeze_emb, emb_scale
        self.fixed_rows = fixed_rows
        if freeze_emb:
            self.model.emb.weight.requires_grad_(False)

    def param_groups(self):
        rest = [p for n, p in self.model.named_parameters() if not n.startswith("emb")]
        groups = [ParamGroup("rest", rest)]
        if not self.freeze_emb:
            fixed = [(self.model.emb.weight, self.fixed_rows)] if self.fixed_rows is not None else []
            groups.append(ParamGroup("emb", [self.model.emb.weight], lr_scale=self.emb_scale,
                                     weight_decay=0.0 if fixed else None, fixed_rows=fixed))
        return groups

    def train_samples(self):
        return self.samples

    def collate(self, items):
        width = max(len(x) for x in items)
        ids = torch.zeros(len(items), width, dtype=torch.long)
        labels = torch.full((len(items), width), -100)
        for i, x in enumerate(items):
            ids[i, : len(x)] = x
            labels[i, : len(x) - 1] = x[1:]
        return ids, labels

    def loss_normaliser(self, batch):
        return int((batch[1] != -100).sum())

    def compute_loss(self, batch):
        self.calls += 1
        if self.fail_at is not None and self.calls > self.fail_at:
            raise RuntimeError("injected crash")
        delay = float(os.environ.get("TINY_STEP_SLEEP", "0"))
        if delay:
            time.sleep(delay)
        ids, labels = batch
        logits = self.model(ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum",
                                                 ignore_index=-100)
        return LossOutput(loss=loss, tokens=int((labels != -100).sum()), samples=len(ids))

    def save_model(self, out_dir):
        torch.save(self.model.state_dict(), out_dir / "model.pt")


class TinyLMStage(Stage):
    @dataclass(frozen=True, kw_only=True)
    class Config:
        train: TrainConfig = field(default_factory=TrainConfig)

    def run(self, ctx):
        trainer = Trainer(TinyTask(seed=ctx.seed), self.config.train, ctx, progress=False)
        result = trainer.train()
        return StageResult(checkpoint=trainer.save_final(), metrics=result.metrics)
'''

ns: dict = {}
exec(compile(TINY_LM, "tiny_lm_plugin", "exec"), ns)  # the same source the subprocess test installs
TinyTask = ns["TinyTask"]


def make_ctx(tmp_path, resume_from=None, run_id="run-a/stages/s"):
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    return RunContext(run_dir=tmp_path, work_dir=work, seed=0, device="cpu", dtype="float32",
                      model_source="none", metrics=MetricsSink(tmp_path / "metrics.jsonl"),
                      resume_from=resume_from, run_id=run_id)


def cfg(**kw):
    base = dict(max_steps=8, batch_size=4, lr=3e-2, warmup_steps=2, checkpoint_every=2, keep_checkpoints=10)
    base.update(kw)
    return TrainConfig(**base)


def test_schedule_shapes():
    c = TrainConfig(max_steps=10, warmup_steps=2, lr=1.0, min_lr_ratio=0.1)
    f = [lr_factor(s, c) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0) and f[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[2:], f[3:])) and f[-1] > 0.1
    lin = TrainConfig(max_steps=4, schedule="linear", lr=1.0)
    assert [lr_factor(s, lin) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    with pytest.raises(ValueError, match="train.max_steps"):
        TrainConfig(max_steps=0)


def test_loss_falls_and_frozen_params_do_not_change(tmp_path):
    task = TinyTask(freeze_emb=True)
    emb_before = task.model.emb.weight.detach().clone()
    head_before = task.model.head.weight.detach().clone()
    result = Trainer(task, cfg(max_steps=30, batch_size=8), make_ctx(tmp_path), progress=False).train()
    assert result.metrics["loss_last_10pct"] < 0.9 * result.metrics["loss_first_10pct"]
    assert torch.equal(task.model.emb.weight, emb_before)
    assert not torch.equal(task.model.head.weight, head_before)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and {"loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_bytes"} <= set(rows[0])


def test_group_lr_scale_is_applied(tmp_path):
    task = TinyTask(emb_scale=0.1)
    trainer = Trainer(task, cfg(max_steps=1, warmup_steps=0, schedule="constant"), make_ctx(tmp_path), progress=False)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"rest": pytest.approx(3e-2), "emb": pytest.approx(3e-3)}


def test_accumulation_is_exact_token_normalisation(tmp_path):
    """4 samples x 1 micro-batch == 2 samples x 2 micro-batches (same samples, no dropout)."""
    results = []
    for bs, accum in ((4, 1), (2, 2)):
        task = TinyTask()
        task.model.drop.p = 0.0
        Trainer(task, cfg(max_steps=3, batch_size=bs, grad_accum=accum, max_grad_norm=None),
                make_ctx(tmp_path / f"{bs}"), progress=False).train()
        results.append(task.model.state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_gives_identical_losses(tmp_path):
    full = Trainer(TinyTask(), cfg(), make_ctx(tmp_path / "a"), progress=False).train()
    ctx = make_ctx(tmp_path / "b")
    with pytest.raises(RuntimeError, match="injected crash"):
        Trainer(TinyTask(fail_at=5), cfg(), ctx, progress=False).train()
    steps = sorted((ctx.work_dir / "steps").iterdir())
    assert [d.name for d in steps] == ["step-000001", "step-000003"]
    torch.manual_seed(123)  # the resumed run must not depend on the ambient RNG
    resumed = Trainer(TinyTask(), cfg(), make_ctx(tmp_path / "b", resume_from=steps[-1]), progress=False).train()
    assert resumed.resumed_from == 3
    assert resumed.losses == full.losses  # bit-identical on CPU
    assert resumed.metrics["final_loss"] == full.metrics["final_loss"]


def test_checkpoint_from_another_run_is_refused(tmp_path):
    ctx = make_ctx(tmp_path)
    Trainer(TinyTask(), cfg(max_steps=2), ctx, progress=False).train()
    step = sorted((ctx.work_dir / "steps").iterdir())[-1]
    other = make_ctx(tmp_path, resume_from=step, run_id="run-b/stages/s")
    with pytest.raises(RunDirError, match="written by another run or stage"):
        Trainer(TinyTask(), cfg(max_steps=4), other, progress=False).train()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    task = TinyTask()
    ctx = make_ctx(tmp_path)
    real = task.compute_loss

    def sometimes_nan(batch):
        out = real(batch)
        if task.calls > 4:
            out.loss = out.loss * float("nan")
        return out

    task.compute_loss = sometimes_nan
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 4 .*last good checkpoint: .*step-000003"):
        Trainer(task, cfg(), ctx, progress=False).train()
    assert (ctx.work_dir / "steps" / "step-000003" / "trainable.pt").exists()
    assert not (ctx.work_dir / "steps" / "step-000004").exists()


def test_empty_dataset_and_no_trainable_params(tmp_path):
    task = TinyTask()
    task.samples = []
    with pytest.raises(FtibError, match="dataset is empty"):
        Trainer(task, cfg(), make_ctx(tmp_path), progress=False).train()
    task = TinyTask()
    task.param_groups = lambda: [ParamGroup("none", [])]
    with pytest.raises(FtibError, match="no trainable parameters"):
        Trainer(task, cfg(), make_ctx(tmp_path), progress=False)


def _metrics(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())["stages"]["tiny"]["metrics"]


def test_killed_process_resumes_to_the_same_result(install_dist, tmp_path):
    """SIGKILL `ftib run` in the middle of a stage; the re-run resumes and matches."""
    site = install_dist("ftib-tiny-lm", {"ftib.stages": {"tiny": "ftib_tiny_lm:TinyLMStage"}},
                        {"ftib_tiny_lm": TINY_LM})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "none", "stages": [{"name": "tiny", "config": {"train": {
        "max_steps": 12, "batch_size": 4, "lr": 0.03, "checkpoint_every": 2}}}]}))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "ftib.core.cli", "run", str(recipe), "--no-progress"]

    straight = tmp_path / "straight"
    subprocess.run(cmd + ["--run-dir", str(straight)], env=env, check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--run-dir", str(killed)], env={**env, "TINY_STEP_SLEEP": "0.3"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "stages/tiny/steps/step-000005"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "manifest.json").read_text())["stages"]["tiny"]["status"] == "running"
    out = subprocess.run(cmd + ["--run-dir", str(killed)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "resumes from" in out.stderr
    a, b = _metrics(straight), _metrics(killed)
    for key in ("first_loss", "final_loss", "loss_first_10pct", "loss_last_10pct"):
        assert a[key] == b[key], key
