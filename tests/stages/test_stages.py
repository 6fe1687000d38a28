"""CPT, Align and SFT on the tiny Qwen3-VL preset and FTibWorld (tiny)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from ftib.core import ConfigError, FtibError
from ftib.core.pipeline import Pipeline
from ftib.core.recipe import load_recipe

TRAIN = {"batch_size": 4, "lr": 2.0e-3, "warmup_steps": 2}


def run_stage(tmp_path, name, config, *, model="tiny-qwen3-vl", run_dir=None):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({"model": model, "stages": [{"name": name, "config": config}]}))
    run_dir = run_dir or tmp_path / f"run-{name}"
    manifest = Pipeline(load_recipe(recipe), run_dir, progress=False).run()
    return manifest["stages"][name], run_dir / manifest["stages"][name]["checkpoint"]


def state(path_or_model):
    if isinstance(path_or_model, torch.nn.Module):
        return {k: v.detach().clone() for k, v in path_or_model.state_dict().items()}
    from ftib.models.bundle import load_bundle

    return state(load_bundle(str(path_or_model)).model)


def changed(before, after):
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def base_state():
    from ftib.models.presets import preset_dir

    return state(preset_dir("tiny-qwen3-vl"))


def test_align_trains_only_the_merger_and_loss_falls(tmp_path, base_state):
    rec, ckpt = run_stage(tmp_path, "align", {"data": "ftibworld:tiny", "max_records": 64,
                                              "train": {**TRAIN, "max_steps": 20}})
    m = rec["metrics"]
    assert m["loss_last_10pct"] < m["loss_first_10pct"] - 0.05, m
    diff = changed(base_state, state(ckpt))
    assert diff and all(".visual.merger." in k or ".visual.deepstack_merger_list." in k for k in diff), diff
    merger = {k for k in base_state if ".visual.merger." in k or "deepstack_merger_list" in k}
    assert diff == merger


def test_sft_full_keeps_vision_frozen_and_loss_falls(tmp_path, base_state):
    rec, ckpt = run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "max_records": 96,
                                            "train": {**TRAIN, "max_steps": 20}})
    m = rec["metrics"]
    assert m["loss_last_10pct"] < m["loss_first_10pct"] - 0.3, m
    diff = changed(base_state, state(ckpt))
    assert not any(".visual." in k for k in diff)
    lm = {k for k in base_state if ".visual." not in k}
    assert diff == lm  # every language-model tensor trained (full)
    assert m["data_dropped"] == 0.0 and m["data_records"] == 96.0


def test_sft_lora_changes_only_adapted_layers(tmp_path, base_state):
    rec, ckpt = run_stage(tmp_path, "sft", {
        "data": "ftibworld:tiny", "max_records": 32,
        "trainable": {"mode": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                                "save_adapter": True}},
        "train": {**TRAIN, "max_steps": 6, "lr": 1.0e-2}})
    diff = changed(base_state, state(ckpt))
    adapted = {k for k in base_state if k.endswith(("q_proj.weight", "v_proj.weight")) and ".visual." not in k}
    assert diff == adapted, diff ^ adapted  # every adapted layer of the language model, nothing else
    assert (ckpt / "adapter" / "adapter_config.json").is_file()


def test_cpt_full_trains_the_language_model_of_the_vlm_and_loss_falls(tmp_path, base_state):
    rec, ckpt = run_stage(tmp_path, "cpt", {"data": ["ftibworld:tiny"], "block_size": 64, "max_documents": 256,
                                            "train": {**TRAIN, "max_steps": 20}})
    m = rec["metrics"]
    assert m["loss_last_10pct"] < m["loss_first_10pct"] - 0.5, m
    diff = changed(base_state, state(ckpt))
    assert diff == {k for k in base_state if ".visual." not in k}  # vision tower and merger frozen
    assert m["data_tokens"] > 0 and m["data_fill"] > 0.9 and "data_truncated" not in m


def test_cpt_with_extension_trains_only_new_rows(tmp_path):
    rec, ckpt = run_stage(tmp_path, "cpt", {
        "data": ["ftibworld:tiny"], "block_size": 64, "extend": {"add": 200},
        "trainable": {"mode": "new_embeddings"}, "train": {**TRAIN, "max_steps": 12, "lr": 2.0e-2}})
    m = rec["metrics"]
    assert m["added_tokens"] > 50 and m["loss_last_10pct"] < m["loss_first_10pct"], m
    from ftib.models.bundle import load_bundle
    from ftib.models.presets import preset_dir

    base = load_bundle(str(preset_dir("tiny-qwen3-vl")))
    new = load_bundle(str(ckpt))
    start = len(base.tokenizer)  # new ids come after every existing id
    w_old, w_new = base.model.get_input_embeddings().weight, new.model.get_input_embeddings().weight
    assert len(new.tokenizer) > start and w_new.shape[0] >= len(new.tokenizer)
    assert torch.equal(w_old[:start], w_new[:start])  # base rows untouched
    assert not torch.equal(w_new[start:len(new.tokenizer)], w_new[start:len(new.tokenizer)] * 0)
    others = changed({k: v for k, v in state(base.model).items() if "embed_tokens" not in k and "lm_head" not in k},
                     {k: v for k, v in state(new.model).items() if "embed_tokens" not in k and "lm_head" not in k})
    assert not others


def test_cpt_packing_vs_padding_and_bad_config(tmp_path):
    from ftib.data.sources import resolve
    from ftib.models.bundle import load_bundle
    from ftib.stages.cpt import read_documents, tokenize_documents

    rec, _ = run_stage(tmp_path, "cpt", {"data": ["ftibworld:tiny"], "block_size": 24, "packing": False,
                                         "max_documents": 64, "train": {**TRAIN, "max_steps": 4}})
    assert rec["status"] == "completed"
    # Over-long documents are truncated and counted (each ends with EOS before the cut).
    ids = tokenize_documents(load_bundle("tiny-qwen3-vl").tokenizer,
                             read_documents((resolve("ftibworld:tiny", "cpt/corpus.jsonl"),), 64))
    assert rec["metrics"]["data_truncated"] == sum(len(d) + 1 > 24 for d in ids) > 0
    assert rec["metrics"]["data_tokens"] == sum(min(len(d) + 1, 24) for d in ids)
    with pytest.raises(ConfigError, match=r"stages\.cpt.*new_embeddings needs `extend`"):
        run_stage(tmp_path, "cpt", {"data": ["ftibworld:tiny"], "trainable": {"mode": "new_embeddings"},
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r2")
    with pytest.raises(ConfigError, match=r"data\[0\]: '/no/such.txt' does not exist"):
        load_recipe_from(tmp_path, {"name": "cpt", "config": {"data": ["/no/such.txt"]}})
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(FtibError, match=r"empty\.txt holds no documents"):
        run_stage(tmp_path, "cpt", {"data": [str(empty)], "train": {"max_steps": 1}}, run_dir=tmp_path / "r3")


def load_recipe_from(tmp_path, stage):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"model": "tiny-qwen3-vl", "stages": [stage]}))
    return load_recipe(p)


def _sft_dir(tmp_path, rows, images=()):
    d = tmp_path / "sftdata"
    d.mkdir(exist_ok=True)
    for name, data in images:
        (d / name).write_bytes(data)
    (d / "sft.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return d / "sft.jsonl"


def test_bad_sft_inputs_fail_clearly(tmp_path):
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "ཁ་དོག་གང་ཡིན།"}]}
    answer = {"role": "assistant", "content": "དམར་པོ།"}
    path = _sft_dir(tmp_path, [{"id": "a", "task": "colour", "images": ["x.png"], "messages": [user, answer]}],
                    images=[("x.png", b"this is not a png")])
    with pytest.raises(FtibError, match=r"sft\.jsonl.*x\.png"):
        run_stage(tmp_path, "sft", {"data": str(path), "train": {"max_steps": 1}}, run_dir=tmp_path / "r1")
    path = _sft_dir(tmp_path, [{"id": "b", "task": "colour", "images": [], "messages": [
        {"role": "user", "content": "ཁ་དོག་གང་ཡིན།"}]}])
    with pytest.raises(FtibError, match=r"sft\.jsonl.*row 1.*last turn must be the assistant"):
        run_stage(tmp_path, "sft", {"data": str(path), "train": {"max_steps": 1}}, run_dir=tmp_path / "r2")
    empty = _sft_dir(tmp_path, [])
    with pytest.raises(FtibError, match=r"sft\.jsonl.*empty"):
        run_stage(tmp_path, "sft", {"data": str(empty), "train": {"max_steps": 1}}, run_dir=tmp_path / "r0")
    # all 8 over max_length: more than max_drop_share (1%), an error naming the file and ids
    with pytest.raises(FtibError, match=r"8 of 8 conversations \(100\.0%\) exceed max_length=8.*instructions\.jsonl \(id"):
        run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "max_records": 8, "max_length": 8,
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r3")


def test_packaged_recipes_validate():
    from ftib.core.cli import packaged_recipe

    tiny = load_recipe(packaged_recipe("tiny.yaml"))
    assert [s.name for s in tiny.stages][:3] == ["cpt", "align", "sft"]
    big = load_recipe(packaged_recipe("ftibvlm-qwen3-vl-8b.yaml"))
    assert big.model.name_or_path == "Qwen/Qwen3-VL-8B-Instruct" and big.run.dtype == "bfloat16"
    assert [s.name for s in big.stages] == ["cpt", "align", "sft"]
    assert big.model.attn_implementation == "sdpa" and big.model.kernels.liger is False


def test_sft_killed_mid_stage_resumes_to_the_same_result(tmp_path, ftib_cache):
    """SIGKILL `ftib run` during SFT, run the same command again: it resumes from the last
    step checkpoint and ends with the same losses as an uninterrupted run."""
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(yaml.safe_dump({"model": "tiny-qwen3-vl", "stages": [{"name": "sft", "config": {
        "data": "ftibworld:tiny", "max_records": 48,
        "train": {**TRAIN, "max_steps": 24, "checkpoint_every": 2}}}]}))
    env = {**os.environ, "FTIB_CACHE_DIR": str(ftib_cache)}
    cmd = [sys.executable, "-m", "ftib.core.cli", "run", str(recipe), "--no-progress"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(cmd + ["--run-dir", str(straight)], env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(cmd + ["--run-dir", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "stages/sft/steps/step-000003"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run(cmd + ["--run-dir", str(killed)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumes from" in out.stderr
    a = json.loads((straight / "manifest.json").read_text())["stages"]["sft"]["metrics"]
    b = json.loads((killed / "manifest.json").read_text())["stages"]["sft"]["metrics"]
    for key in ("first_loss", "final_loss", "loss_first_10pct", "loss_last_10pct"):
        assert a[key] == b[key], (key, a[key], b[key])


def test_sft_on_translation_pairs_learns(tmp_path):
    """The SFT warm-up of the semantic-GRPO recipe: prompt -> reference chat turns."""
    rec, _ = run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "source": "translation", "max_records": 64,
                                         "train": {**TRAIN, "max_steps": 16}})
    m = rec["metrics"]
    assert m["data_records"] == 64.0 and m["loss_last_10pct"] < m["loss_first_10pct"] - 0.3, m


class _FakeChat:
    """A conversation is its answer token id; an image is a number."""

    def encode(self, messages, images, enable_thinking=None):
        return {"input_ids": torch.tensor([1, messages]), "labels": torch.tensor([-100, messages]),
                "pixel_values": torch.tensor([float(images[0])])}

    def collate(self, items):
        return {k: torch.stack([x[k] for x in items]) for k in items[0]}


class _FakeModel(torch.nn.Module):
    """Bets on the token whose id is the pixel value when ``looks`` is set; uniform
    over tokens 2 and 3 otherwise. HF-like: an identity lm_head over 4-dim hidden
    states, ``logits_to_keep`` and ``output_hidden_states`` (the fused loss's path)."""

    def __init__(self, looks: bool):
        super().__init__()
        self.looks = looks
        self.lm_head = torch.nn.Linear(4, 4, bias=False)
        self.lm_head.weight.data = torch.eye(4)

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, pixel_values, use_cache=None, logits_to_keep=0, output_hidden_states=False):
        hidden = torch.zeros(*input_ids.shape, 4)
        hidden[..., :2] = -1e4
        if self.looks:
            hidden[torch.arange(len(pixel_values)), :, pixel_values.view(-1).long()] += 3.0
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        out = type("Out", (), {"logits": self.lm_head(hidden[:, keep])})()
        out.hidden_states = (hidden,) if output_hidden_states else None
        return out


def test_image_grounding_measures_dependence_on_the_image():
    from ftib.stages.common import image_grounding, split_grounding_records

    # answer token == image value, alternating, so the shifted images are all wrong
    records = [(t, [str(t)], f"r{i}") for i, t in enumerate([2, 3, 2, 3])]
    blind = image_grounding(_FakeModel(looks=False), _FakeChat(), records)
    assert blind["grounding_gap"] == 0.0 and blind["grounding_records"] == 4
    assert blind["grounding_loss_matched"] == pytest.approx(torch.log(torch.tensor(2.0)).item())
    seeing = image_grounding(_FakeModel(looks=True), _FakeChat(), records, batch_size=3)
    right = -torch.log_softmax(torch.tensor([3.0, 0.0]), 0)
    assert seeing["grounding_loss_matched"] == pytest.approx(right[0].item(), rel=1e-5)
    assert seeing["grounding_loss_shuffled"] == pytest.approx(right[1].item(), rel=1e-5)
    assert seeing["grounding_gap"] == pytest.approx((right[1] - right[0]).item(), rel=1e-5)
    train, held, kept = split_grounding_records(records + [(2, [], "text-only")], 2, [1, 2, 3, 4, 5])
    assert [r[2] for r in held] == ["r2", "r3"] and [r[2] for r in train] == ["r0", "r1", "text-only"]
    assert kept == [1, 2, 5]
    assert split_grounding_records(records, 0)[1:] == ([], None)
    with pytest.raises(FtibError, match="grounding_check"):
        split_grounding_records(records, 4)
    with pytest.raises(FtibError, match="at least 2"):
        image_grounding(_FakeModel(looks=True), _FakeChat(), records[:1])
    # a picture's records in a row (a scene's questions): each is shifted onto the next
    # *other* picture, not onto its own again
    runs = [(t, [str(t)], f"r{i}") for i, t in enumerate([2, 2, 3, 3, 3])]
    assert image_grounding(_FakeModel(looks=True), _FakeChat(), runs)["grounding_gap"] == pytest.approx(
        seeing["grounding_gap"], rel=1e-5)
    with pytest.raises(FtibError, match="at least 2 different images"):
        image_grounding(_FakeModel(looks=True), _FakeChat(), [(2, ["2"], "a"), (2, ["2"], "b")])


def test_align_grounding_check_holds_records_out(tmp_path):
    rec, _ = run_stage(tmp_path, "align", {"data": "ftibworld:tiny", "max_records": 40, "grounding_check": 8,
                                           "train": {**TRAIN, "max_steps": 4}})
    m = rec["metrics"]
    assert m["data_records"] == 32 and m["grounding_records"] == 8
    assert {"grounding_loss_matched", "grounding_loss_shuffled", "grounding_gap", "grounding_gap_before"} <= set(m)
    assert m["grounding_gap"] == pytest.approx(m["grounding_loss_shuffled"] - m["grounding_loss_matched"])


def test_sft_tasks_selects_a_curriculum_and_names_a_typo(tmp_path):
    from ftib.data.loaders import load_sft
    from ftib.data.sources import resolve

    rows = load_sft(resolve("ftibworld:tiny", "sft/instructions.jsonl"))
    want = sum(t in ("colour", "count") for t in rows["task"])
    assert 0 < want < len(rows)
    rec, _ = run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "tasks": ["colour", "count"],
                                         "train": {**TRAIN, "max_steps": 1}}, run_dir=tmp_path / "r1")
    assert rec["metrics"]["data_records"] == want
    with pytest.raises(ConfigError, match=r"no record of task 'colours'; its tasks: colour \(\d+\), count"):
        run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "tasks": ["colours"], "train": {"max_steps": 1}},
                  run_dir=tmp_path / "r2")
    with pytest.raises(ConfigError, match=r"tasks selects instruction records; source='translation'"):
        run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "source": "translation", "tasks": ["colour"],
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r3")


def test_sft_task_weights_list_a_task_k_times_per_epoch(tmp_path):
    """``task_weights`` repeats each record of a task in the epoch (encoded once); a
    weight for a task the data lacks, or outside ``tasks``, or not a whole number >= 1, is
    an error naming it."""
    from collections import Counter

    from ftib.data.loaders import load_sft
    from ftib.data.sources import resolve

    have = Counter(load_sft(resolve("ftibworld:tiny", "sft/instructions.jsonl"))["task"])
    rec, _ = run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "task_weights": {"colour": 3, "count": 2},
                                         "train": {**TRAIN, "max_steps": 1}}, run_dir=tmp_path / "r1")
    m = rec["metrics"]
    assert m["data_records"] == sum(have.values())
    assert m["data_samples"] == sum(have.values()) + 2 * have["colour"] + have["count"]
    with pytest.raises(ConfigError, match=r"task_weights: .* no record of task 'colours'"):
        run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "task_weights": {"colours": 2},
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r2")
    with pytest.raises(ConfigError, match=r"task_weights names 'count', which stages.sft.tasks leaves out"):
        run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "tasks": ["colour"], "task_weights": {"count": 2},
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r3")
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match=r"task_weights.colour: (.* not a whole number >= 1|expected int)"):
            run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "task_weights": {"colour": bad},
                                        "train": {"max_steps": 1}}, run_dir=tmp_path / f"bad{bad}")


def test_sft_trains_several_data_sources_together(tmp_path):
    """``data`` may list several instruction sources: their records are trained together
    (``tasks``, ``max_records`` and ``task_weights`` apply to each), ``data_weights``
    lists each record of a source that many times per epoch; a weight list of the wrong
    length, a bad weight, or several sources for a text-task ``source`` is an error."""
    from collections import Counter

    from ftib.data.loaders import load_sft
    from ftib.data.sources import resolve

    dialogues = "ftibworld:tiny/sft/dialogues.jsonl"
    n_dlg = Counter(load_sft(resolve(dialogues, "sft/instructions.jsonl"))["task"])["colour"]
    n_ins = Counter(load_sft(resolve("ftibworld:tiny", "sft/instructions.jsonl"))["task"])["colour"]
    rec, _ = run_stage(tmp_path, "sft", {"data": ["ftibworld:tiny", dialogues], "tasks": ["colour"],
                                         "data_weights": [1, 3], "train": {**TRAIN, "max_steps": 1}},
                       run_dir=tmp_path / "r1")
    m = rec["metrics"]
    assert n_dlg > 0 and n_ins > 0
    assert m["data_records"] == n_ins + n_dlg
    assert m["data_samples"] == n_ins + 3 * n_dlg
    with pytest.raises(ConfigError, match=r"data_weights has 1 entries for 2 data sources"):
        run_stage(tmp_path, "sft", {"data": ["ftibworld:tiny", dialogues], "data_weights": [2],
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r2")
    with pytest.raises(ConfigError, match=r"data_weights\[1\]: 0 is not a whole number"):
        run_stage(tmp_path, "sft", {"data": ["ftibworld:tiny", dialogues], "data_weights": [1, 0],
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r3")
    with pytest.raises(ConfigError, match=r"data lists 2 sources; source='translation' reads one"):
        run_stage(tmp_path, "sft", {"data": ["ftibworld:tiny", "ftibworld:tiny"], "source": "translation",
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r4")
    with pytest.raises(ConfigError, match=r"data: 'nowhere.jsonl' does not exist"):
        run_stage(tmp_path, "sft", {"data": ["ftibworld:tiny", "nowhere.jsonl"], "train": {"max_steps": 1}},
                  run_dir=tmp_path / "r5")


def test_sft_tasks_of_several_sources_name_their_union(tmp_path):
    """With several sources, ``tasks`` names tasks of their union: text-only translation
    instructions beside replayed existence chats; a task in no source, or a source left
    with no record, is an error naming every source's tasks."""
    from collections import Counter

    from ftib.data.loaders import load_sft
    from ftib.data.sources import resolve

    dialogues = "ftibworld:tiny/sft/dialogues.jsonl"
    have_dlg = Counter(load_sft(resolve(dialogues, "sft/instructions.jsonl"))["task"])
    have_ins = Counter(load_sft(resolve("ftibworld:tiny", "sft/instructions.jsonl"))["task"])
    assert "existence" in have_dlg and "existence" not in have_ins and "translate" not in have_dlg
    rec, _ = run_stage(tmp_path, "sft", {"data": ["ftibworld:tiny", dialogues], "tasks": ["translate", "existence"],
                                         "task_weights": {"translate": 2}, "train": {**TRAIN, "max_steps": 1}},
                       run_dir=tmp_path / "r1")
    m = rec["metrics"]
    assert m["data_records"] == have_ins["translate"] + have_dlg["existence"]
    assert m["data_samples"] == 2 * have_ins["translate"] + have_dlg["existence"]
    with pytest.raises(ConfigError, match=r"tasks: no data source has a record of task 'existance'; .*"
                                          r"instructions.jsonl has .*translate \(\d+\).*dialogues.jsonl has .*existence"):
        run_stage(tmp_path, "sft", {"data": ["ftibworld:tiny", dialogues], "tasks": ["translate", "existance"],
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r2")
    with pytest.raises(ConfigError, match=r"task_weights: no data source has a record of task 'pope2'"):
        run_stage(tmp_path, "sft", {"data": ["ftibworld:tiny", dialogues], "task_weights": {"pope2": 2},
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r3")
    with pytest.raises(ConfigError, match=r"dialogues.jsonl has no record of any of the tasks translate, headline; "
                                          r"its tasks: .*existence \(\d+\)"):
        run_stage(tmp_path, "sft", {"data": ["ftibworld:tiny", dialogues], "tasks": ["translate", "headline"],
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r4")


def test_sft_code_switch_adds_switched_copies(tmp_path):
    """``code_switch`` adds copies of a share of the conversations with a lexicon word
    (counted in the metrics); a share outside (0, 1] or a missing lexicon file is an
    error naming the key."""
    rec, _ = run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "max_records": 40,
                                         "code_switch": {"lexicon": "ftibworld", "share": 0.5,
                                                         "direction": "from_tibetan"},
                                         "train": {**TRAIN, "max_steps": 1}}, run_dir=tmp_path / "r1")
    m = rec["metrics"]
    assert m["data_code_switch_candidates"] > 10
    assert m["data_code_switch_records"] == round(0.5 * m["data_code_switch_candidates"])
    assert m["data_records"] == 40 + m["data_code_switch_records"]
    assert m["data_code_switch_words"] >= m["data_code_switch_records"]
    with pytest.raises(ConfigError, match=r"code_switch.share: 0.0 is not in \(0, 1\]"):
        run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "code_switch": {"lexicon": "ftibworld", "share": 0},
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r2")
    with pytest.raises(ConfigError, match=r"code_switch applies to instruction records; source='translation'"):
        run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "source": "translation",
                                    "code_switch": {"lexicon": "ftibworld"}, "train": {"max_steps": 1}},
                  run_dir=tmp_path / "r4")
    with pytest.raises(ConfigError, match=r"code_switch.lexicon: 'nowhere.tsv' does not exist"):
        run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "code_switch": {"lexicon": "nowhere.tsv"},
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "r3")


def test_chat_task_repeats_share_one_encoded_sample():
    import logging

    from ftib.models import load_bundle
    from ftib.stages.common import ChatTask

    bundle = load_bundle("tiny-qwen3-vl")
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    records = [(chat, [], "r0"), (chat, [], "r1")]
    task = ChatTask(bundle.model, [], bundle.chat, records, max_length=64, overflow="error", save=None,
                    logger=logging.getLogger("t"), repeats=[1, 3])
    samples = task.train_samples()
    assert len(samples) == 4 and samples[1] is samples[2] is samples[3] and samples[0] is not samples[1]
    assert task.stats["samples"] == 4 and task.stats["records"] == 2


def test_sft_replay_lists_text_rows_beside_the_conversations(tmp_path):
    """``replay`` adds ``share / (1 - share)`` document rows per conversation sample
    (counted, the cut ones too); a share outside (0, 1) or a missing file is an error
    naming the key."""
    rec, _ = run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "max_records": 30,
                                         "replay": {"data": ["ftibworld:tiny"], "share": 0.25, "max_length": 16},
                                         "train": {**TRAIN, "max_steps": 1}}, run_dir=tmp_path / "r1")
    m = rec["metrics"]
    assert m["data_replay_samples"] == round(30 / 3)
    assert 0 < m["data_replay_rows"] <= m["data_replay_samples"] <= m["data_replay_documents"]
    assert m["data_replay_truncated"] > 0  # FTibWorld's Tibetan documents are longer than 16 tokens
    for bad in (0, 1, 1.5):
        with pytest.raises(ConfigError, match=r"replay.share must lie strictly between 0 and 1"):
            run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "replay": {"data": ["ftibworld:tiny"], "share": bad},
                                        "train": {"max_steps": 1}}, run_dir=tmp_path / f"bad{bad}")
    with pytest.raises(ConfigError, match=r"replay.*data"):
        run_stage(tmp_path, "sft", {"data": "ftibworld:tiny", "replay": {"data": [str(tmp_path / "nope.txt")]},
                                    "train": {"max_steps": 1}}, run_dir=tmp_path / "missing")


def test_replay_rows_label_every_token_and_batch_with_conversations():
    """A document row is labelled on every token, ends with the document end, carries
    the conversation samples' extra keys, and collates with image conversations into
    one batch whose loss is finite."""
    import logging

    from ftib.data.loaders import load_sft
    from ftib.data.sources import resolve
    from ftib.models import load_bundle
    from ftib.models.chat import document_end_id
    from ftib.stages.common import ChatTask, ReplaySpec, replay_samples

    bundle = load_bundle("tiny-qwen3-vl")
    rows = load_sft(resolve("ftibworld:tiny", "sft/instructions.jsonl")).select(range(4))
    records = [(r["messages"], list(r["images"]), r["id"]) for r in rows]
    task = ChatTask(bundle.model, [], bundle.chat, records, max_length=512, overflow="error", save=None,
                    logger=logging.getLogger("t"))
    keys = task.samples[0].tensors
    texts, stats = replay_samples(bundle.tokenizer, ReplaySpec(data=("ftibworld:tiny",), share=0.5, max_length=4096),
                                  len(task.samples), seed=0, keys=keys)
    assert len(texts) == 4 and stats["data_replay_truncated"] == 0
    eos = document_end_id(bundle.tokenizer)
    for s in texts:
        t = s.tensors
        assert set(t) == set(keys) - {"pixel_values", "image_grid_thw"}
        assert torch.equal(t["labels"], t["input_ids"]) and int(t["input_ids"][-1]) == eos
        assert int(t["attention_mask"].sum()) == t["input_ids"].numel()
    again, _ = replay_samples(bundle.tokenizer, ReplaySpec(data=("ftibworld:tiny",), share=0.5, max_length=4096),
                              len(task.samples), seed=0, keys=keys)
    assert [torch.equal(a.tensors["input_ids"], b.tensors["input_ids"]) for a, b in zip(texts, again)] == [True] * 4
    batch = task.collate([texts[0], task.samples[0], texts[1], task.samples[1]])
    out = task.compute_loss(batch)
    assert torch.isfinite(out.loss) and task.loss_normaliser(batch) > int((texts[0].tensors["labels"] != -100).sum())


def test_sft_replay_keeps_the_plain_text_model(tmp_path):
    """What replay is for: after the same chat-only SFT steps, the plain-text loss on
    the documents is lower with replay than without (the chat loss alone wears it away)."""
    from ftib.models import load_bundle
    from ftib.stages.common import ReplaySpec, replay_samples

    def text_loss(ckpt):
        from ftib.stages.common import lm_loss_sum

        bundle = load_bundle(str(ckpt))
        texts, _ = replay_samples(bundle.tokenizer, ReplaySpec(data=("ftibworld:tiny",), share=0.5, max_length=64),
                                  32, seed=1)
        batch = bundle.chat.collate([s.tensors for s in texts])
        labels = batch.pop("labels")
        with torch.no_grad():
            return float(lm_loss_sum(bundle.model, batch, labels)) / int((labels[:, 1:] != -100).sum())

    cfg = {"data": "ftibworld:tiny", "max_records": 64, "train": {**TRAIN, "max_steps": 30, "lr": 5e-3}}
    _, plain = run_stage(tmp_path, "sft", cfg, run_dir=tmp_path / "plain")
    _, mixed = run_stage(tmp_path, "sft", {**cfg, "replay": {"data": ["ftibworld:tiny"], "share": 0.5,
                                                             "max_length": 64}}, run_dir=tmp_path / "mixed")
    assert text_loss(mixed) < text_loss(plain) - 0.5


def test_cpt_extension_with_the_world_lexicon_counts_its_rows(tmp_path):
    """``extend.lexicon: ftibworld`` starts the new tokens of the world's Tibetan words
    from their Chinese translations; the stage counts them (``lexicon_tokens``)."""
    rec, _ = run_stage(tmp_path, "cpt", {
        "data": ["ftibworld:tiny"], "block_size": 64, "extend": {"add": 200, "lexicon": "ftibworld"},
        "train": {**TRAIN, "max_steps": 1}})
    m = rec["metrics"]
    assert 0 < m["lexicon_tokens"] < m["added_tokens"], m
