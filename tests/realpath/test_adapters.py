"""Adapters a user can load: CPT (vocabulary extension, LoRA + trained embeddings) and SFT
(LoRA) adapters load with plain peft on their base after the one documented call
(``resize_token_embeddings`` to the recorded size), carry the tokenizer, and
``ftib export --merge`` writes a merged directory that plain transformers loads with the
same logits. The checks run in subprocesses that never import ftib."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

RECIPE = {
    "run": {"seed": 0, "device": "cpu", "dtype": "float32"},
    "model": "tiny-qwen3",
    "stages": [
        {"name": "cpt", "config": {
            "data": ["ftibworld:tiny"], "block_size": 32, "max_documents": 32, "extend": {"add": 24},
            "trainable": {"mode": "lora", "lora_train_embeddings": True,
                          "lora": {"r": 4, "alpha": 8, "save_adapter": True}},
            "train": {"max_steps": 2, "batch_size": 2, "lr": 1.0e-2}}},
        {"name": "sft", "config": {
            "data": "ftibworld:tiny", "source": "translation", "max_records": 8,
            "trainable": {"mode": "lora", "lora": {"r": 4, "alpha": 8, "save_adapter": True}},
            "train": {"max_steps": 2, "batch_size": 2, "lr": 1.0e-2}}},
    ],
    "evaluators": [],
}

PLAIN = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import PeftModel
    ref_dir, kind, path = sys.argv[1:4]
    if kind == "adapter":  # exactly the README's snippet
        conf = json.load(open(path + "/adapter_config.json"))
        base = AutoModelForCausalLM.from_pretrained(conf["base_model_name_or_path"])
        base.resize_token_embeddings(conf["ftib"]["vocab_size"])
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ref = AutoModelForCausalLM.from_pretrained(ref_dir)
    ids = torch.tensor([tok("བཀྲ་ཤིས་བདེ་ལེགས། 你好")["input_ids"] + [len(tok) - 1]])
    with torch.no_grad():
        diff = (model.eval()(ids).logits - ref.eval()(ids).logits).abs().max().item()
    assert not any(m == "ftib" or m.startswith("ftib.") for m in sys.modules), "ftib was imported"
    print(json.dumps({"diff": diff, "tokens": len(tok)}))
""")


def _plain(ref_dir, kind, path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", PLAIN, str(ref_dir), kind, str(path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    (root / "r.yaml").write_text(yaml.safe_dump(RECIPE, allow_unicode=True))
    out = subprocess.run([sys.executable, "-m", "ftib.core.cli", "run", "--run-dir", str(root / "run"),
                          "--no-progress", str(root / "r.yaml")], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    return root / "run"


@pytest.mark.parametrize("stage", ["cpt", "sft"])
def test_adapter_loads_in_plain_peft_with_the_documented_call(run_dir, stage):
    final = run_dir / "stages" / stage / "final"
    adapter = final / "adapter"
    conf = json.loads((adapter / "adapter_config.json").read_text())
    assert os.path.isabs(conf["base_model_name_or_path"])
    readme = (adapter / "README.md").read_text()
    assert f"base.resize_token_embeddings({conf['ftib']['vocab_size']})" in readme
    got = _plain(final, "adapter", adapter)
    assert got["diff"] < 1e-4, got
    tok_final = json.loads((final / "tokenizer.json").read_text())
    assert got["tokens"] == len(tok_final["model"]["vocab"]) + sum(
        t["id"] >= len(tok_final["model"]["vocab"]) for t in tok_final["added_tokens"])


def test_cpt_adapter_needs_the_resize(run_dir):
    """The CPT adapter's embeddings are larger than its base's: the recorded size is real."""
    adapter = run_dir / "stages" / "cpt" / "final" / "adapter"
    conf = json.loads((adapter / "adapter_config.json").read_text())
    base_conf = json.loads(open(os.path.join(conf["base_model_name_or_path"], "config.json")).read())
    assert conf["ftib"]["vocab_size"] > base_conf["vocab_size"]
    assert conf["ftib"]["vocab_size"] % 128 == 0  # padded (extend.pad_to_multiple_of)


@pytest.mark.parametrize("stage", ["cpt", "sft"])
def test_export_merge_is_a_plain_hf_directory_with_the_same_logits(run_dir, stage, tmp_path):
    from ftib.models.export import main

    out = tmp_path / "export"
    assert main(["--merge", str(run_dir / "stages" / stage), str(out)]) == 0
    assert not (out / "adapter").exists()
    got = _plain(run_dir / "stages" / stage / "final", "merged", out)
    assert got["diff"] < 1e-4, got


def test_export_refuses_a_non_empty_target(run_dir, tmp_path):
    from ftib.models.export import main

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert main(["--merge", str(run_dir / "stages" / "sft"), str(tmp_path / "x")]) == 2
