"""Optional GPU accelerators chosen by the recipe's ``model`` section:
``attn_implementation`` and ``kernels.liger``. A request that cannot be met raises a
clear error before training; where liger-kernel can run (CUDA, or Triton's CPU
interpreter for the fused linear cross-entropy) the loss equals the stock one."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from ftib.core import ConfigError, FtibError
from ftib.core.pipeline import Pipeline
from ftib.core.recipe import load_recipe

CPT = {"data": ["ftibworld:tiny"], "block_size": 64, "max_documents": 32,
       "train": {"batch_size": 4, "max_steps": 2, "lr": 1.0e-3}}


def run_cpt(tmp_path, model, device="cpu", config=CPT):
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"run": {"device": device}, "model": model,
                                      "stages": [{"name": "cpt", "config": config}]}))
    manifest = Pipeline(load_recipe(recipe), tmp_path / "run", progress=False).run()
    return manifest["stages"]["cpt"]


def test_liger_without_the_package_names_it_and_the_gpu_extra(tmp_path, monkeypatch):
    for name in ("liger_kernel", "liger_kernel.transformers", "liger_kernel.transformers.monkey_patch"):
        monkeypatch.setitem(sys.modules, name, None)  # import of it raises ImportError
    with pytest.raises(FtibError, match=r"kernels\.liger.*liger-kernel package.*ftib\[gpu\]"):
        run_cpt(tmp_path, {"name_or_path": "tiny-qwen3", "kernels": {"liger": True}})
    assert not (tmp_path / "run" / "stages" / "cpt" / "steps").exists()  # nothing trained


def test_liger_on_cpu_without_the_interpreter_names_the_device(tmp_path, monkeypatch):
    pytest.importorskip("liger_kernel")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(FtibError, match=r"kernels\.liger.*CUDA device; the model is on cpu.*TRITON_INTERPRET=1"):
        run_cpt(tmp_path, {"name_or_path": "tiny-qwen3", "kernels": {"liger": True}})


def test_flash_attention_2_that_cannot_run_raises(tmp_path):
    if importlib.util.find_spec("flash_attn") is None:
        match = r"attn_implementation: flash_attention_2 needs the flash-attn package.*ftib\[gpu\].*sdpa"
    else:  # installed, but this test runs on the CPU
        match = r"attn_implementation: flash_attention_2 runs on CUDA only; the model is loaded on cpu"
    with pytest.raises(FtibError, match=match):
        run_cpt(tmp_path, {"name_or_path": "tiny-qwen3", "attn_implementation": "flash_attention_2"})


def test_unknown_attention_and_kernel_options_fail_clearly(tmp_path):
    with pytest.raises(FtibError, match=r"attn_implementation: 'bogus' cannot be used"):
        run_cpt(tmp_path, {"name_or_path": "tiny-qwen3", "attn_implementation": "bogus"})
    recipe = tmp_path / "k.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name_or_path": "tiny-qwen3", "kernels": {"ligr": True}},
                                      "stages": [{"name": "cpt", "config": CPT}]}))
    with pytest.raises(ConfigError, match=r"model\.kernels\.ligr: unknown key; did you mean 'liger'"):
        load_recipe(recipe)
    # The override path reaches the nested option.
    recipe.write_text(yaml.safe_dump({"model": "tiny-qwen3", "stages": [{"name": "cpt", "config": CPT}]}))
    assert load_recipe(recipe, ["model.kernels.liger=true"]).model.kernels.liger is True


def liger_fits_qwen3_vl() -> bool:
    """Whether this liger-kernel release can patch Qwen3-VL under this transformers
    release: liger defines its Qwen3-VL output class only where transformers still has
    ``Qwen3VLCausalLMOutputWithPast`` (0.8.5 under transformers 5.24 does not)."""
    from liger_kernel.transformers.model import output_classes  # noqa: PLC0415

    return hasattr(output_classes, "LigerQwen3VLCausalLMOutputWithPast")


# The error apply_liger raises where liger cannot patch Qwen3-VL (see liger_fits_qwen3_vl).
VL_UNFIT = (r"model\.kernels\.liger: liger-kernel \S+ cannot patch Qwen3VLForConditionalGeneration under "
            r"transformers \S+: ImportError: cannot import name 'LigerQwen3VLCausalLMOutputWithPast'")


# Run in a fresh process: TRITON_INTERPRET is read when Triton kernels are defined.
_INTERPRETED = textwrap.dedent(r"""
    import json, sys
    import torch
    from transformers.models.qwen3 import modeling_qwen3
    from ftib.data.packing import pack_documents
    from ftib.models.bundle import apply_liger, liger_patches, load_bundle
    from ftib.stages.common import LabelledLMTask, kernel_metrics

    stock_norm, stock_mlp = modeling_qwen3.Qwen3RMSNorm, modeling_qwen3.Qwen3MLP
    stock_rope = modeling_qwen3.apply_rotary_pos_emb
    ref, fused = (load_bundle("tiny-qwen3").model.train() for _ in range(2))
    # liger 0.8.5's RMSNorm and SwiGLU kernels do not run in Triton's interpreter (it
    # passes Python floats where compiled Triton passes scalars, and liger calls .to()
    # on them); the fused linear cross-entropy does.
    applied = apply_liger(fused, rms_norm=False, swiglu=False)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, 2000, (int(n),), generator=g).tolist() for n in torch.randint(5, 90, (10,), generator=g)]
    packed, _ = pack_documents(docs, 64, eos_id=1, pad_id=0)

    class Task(LabelledLMTask):
        def __init__(self, model):
            self.model = model

    out = {"applied": list(applied), "metrics": kernel_metrics(fused), "ref_patches": list(liger_patches(ref))}
    losses = []
    for model in (ref, fused):
        model.zero_grad(set_to_none=True)
        loss = Task(model).compute_loss(dict(packed)).loss
        loss.backward()
        losses.append(loss.item())
    out["losses"] = losses
    grads = [dict((n, p.grad) for n, p in m.named_parameters()) for m in (ref, fused)]
    out["max_grad_diff"] = max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0])
    out["max_grad"] = max(v.abs().max().item() for v in grads[0].values())
    # Full default application: records its patches; the transformers module keeps its
    # stock classes and functions (only this instance changes).
    other = load_bundle("tiny-qwen3").model
    out["full"] = list(apply_liger(other))
    out["globals_kept"] = (modeling_qwen3.Qwen3RMSNorm is stock_norm and modeling_qwen3.Qwen3MLP is stock_mlp
                           and modeling_qwen3.apply_rotary_pos_emb is stock_rope)
    out["ref_forward_stock"] = "forward" not in vars(ref)
    # Qwen3-VL through the chat path: the same parity where this liger-kernel release
    # fits this transformers release, else its clear error (the test says which).
    from ftib.core.errors import FtibError
    vl = load_bundle("tiny-qwen3-vl")
    msgs = [{"role": "user", "content": "ཁ་དོག་གང་ཡིན།"}, {"role": "assistant", "content": "དམར་པོ།"}]
    batch = vl.chat.collate([vl.chat.encode(msgs, [])])
    try:
        fused_vl = load_bundle("tiny-qwen3-vl").model.train()
        apply_liger(fused_vl, rms_norm=False)
    except FtibError as exc:
        out["vl_error"] = str(exc)
    else:
        out["vl_losses"] = [Task(m).compute_loss(dict(batch)).loss.item() for m in (vl.model.train(), fused_vl)]
    print("RESULT" + json.dumps(out))
""")


def test_liger_fused_cross_entropy_matches_the_stock_loss_under_the_triton_interpreter(tmp_path):
    """CPU check of the integration (label shift, sum reduction, packed positions) in
    Triton's interpreter; the full kernel set is checked on CUDA below."""
    pytest.importorskip("liger_kernel")
    env = {**os.environ, "TRITON_INTERPRET": "1", "FTIB_CACHE_DIR": os.environ["FTIB_CACHE_DIR"]}
    proc = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True,
                          timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    out = json.loads(line[len("RESULT"):])
    assert out["applied"] == ["fused_linear_cross_entropy"] and out["ref_patches"] == []
    assert out["metrics"] == {"liger/fused_linear_cross_entropy": 1.0}
    ref, fused = out["losses"]
    assert fused == pytest.approx(ref, rel=1e-5), out
    assert out["max_grad_diff"] <= 1e-5 * max(1.0, out["max_grad"]), out
    assert out["full"] == ["fused_linear_cross_entropy", "rms_norm", "swiglu"]
    assert out["globals_kept"] and out["ref_forward_stock"], out
    if liger_fits_qwen3_vl():
        assert "vl_error" not in out, out["vl_error"]
        assert out["vl_losses"][1] == pytest.approx(out["vl_losses"][0], rel=1e-5), out
    else:  # e.g. liger-kernel 0.8.5 under transformers 5.24 (output class renamed)
        assert "vl_losses" not in out and re.match(VL_UNFIT, out["vl_error"]), out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="liger-kernel's full kernel set needs CUDA")
@pytest.mark.parametrize("model", ["tiny-qwen3", "tiny-qwen3-vl"])
def test_liger_cpt_on_cuda_matches_stock_and_is_recorded(tmp_path, model):
    pytest.importorskip("liger_kernel")
    cfg = {**CPT, "train": {**CPT["train"], "precision": "fp32", "max_steps": 3}}
    fused = {"name_or_path": model, "kernels": {"liger": True}}
    if model == "tiny-qwen3-vl" and not liger_fits_qwen3_vl():
        with pytest.raises(FtibError, match=VL_UNFIT):  # before any step is taken
            run_cpt(tmp_path / "liger", fused, device="cuda", config=cfg)
        assert not (tmp_path / "liger" / "run" / "stages" / "cpt" / "steps").exists()
        return
    stock = run_cpt(tmp_path / "stock", model, device="cuda", config=cfg)["metrics"]
    liger = run_cpt(tmp_path / "liger", fused, device="cuda", config=cfg)["metrics"]
    assert liger["liger/fused_linear_cross_entropy"] == 1.0 and liger["liger/rms_norm"] == 1.0
    assert not any(k.startswith("liger/") for k in stock)
    for key in ("first_loss", "final_loss"):
        assert liger[key] == pytest.approx(stock[key], rel=2e-3), (key, liger[key], stock[key])
