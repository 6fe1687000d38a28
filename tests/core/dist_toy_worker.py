"""One rank of the toy distributed training run (launched by test_distributed.py).

    torchrun --nproc_per_node 2 dist_toy_worker.py OUT_DIR MODE MAX_STEPS BATCH_SIZE N_SAMPLES

Trains test_train.py's TinyTask (dropout off) with the shared loop; rank 0 writes the
per-step losses (``losses.json``) and the final model (``work/final/model.pt``) to
OUT_DIR. With MODE fsdp2 it first checks that a task FSDP2 cannot shard is refused
(``refusal.txt``).
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_train import TINY_LM  # noqa: E402  (the toy task's source, shared with test_train)

from ftib.core import distributed as D  # noqa: E402
from ftib.core.errors import FtibError  # noqa: E402
from ftib.core.interfaces import RunContext  # noqa: E402
from ftib.core.rundir import MetricsSink  # noqa: E402
from ftib.core.train import TrainConfig, Trainer  # noqa: E402


#: Embedding rows with a fixed gradient of 0 (ParamGroup.fixed_rows), on both FSDP2
#: shards of the 17-row table (rows 0-8 and 9-16): test_distributed checks they did not move.
FIXED_ROWS = [0, 5, 16]


def main() -> None:
    out, mode, max_steps, batch_size, n = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    out = Path(out)
    ns: dict = {}
    exec(compile(TINY_LM, "tiny_lm_plugin", "exec"), ns)
    info = D.env_dist_info()
    torch.manual_seed(0)
    task = ns["TinyTask"](n=n, fixed_rows=FIXED_ROWS)
    task.model.drop.p = 0.0
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(run_dir=out, work_dir=work, seed=0, device="cpu", dtype="float32", dist=info,
                     model_source="none", metrics=MetricsSink(out / "metrics.jsonl", enabled=info.is_main),
                     run_id="dist-toy")
    cfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, lr=3e-2, warmup_steps=2,
                      checkpoint_every=2, keep_checkpoints=20, distributed=mode)
    if mode == "fsdp2":
        # An explicit request that cannot be met: a whole-tensor gradient hook under FSDP2.
        hooked = ns["TinyTask"](n=n)
        hooked.model.emb.weight.register_hook(lambda g: g * 1.0)
        try:
            Trainer(hooked, cfg, ctx, progress=False)
            refusal = "accepted"
        except FtibError as exc:
            refusal = str(exc)
        if info.is_main:
            (out / "refusal.txt").write_text(refusal)
    trainer = Trainer(task, cfg, ctx, progress=False)
    result = trainer.train()
    trainer.save_final()
    if info.is_main:
        (out / "losses.json").write_text(json.dumps(result.losses))
    D.teardown()


if __name__ == "__main__":
    main()
