import pytest
import yaml

from ftib.core import ConfigError
from ftib.core.recipe import apply_overrides, load_recipe, parse_override

RECIPE = {
    "run": {"seed": 1},
    "model": "base-model",
    "stages": [
        {"name": "counter", "config": {"steps": 2}},
        {"name": "counter", "id": "second", "config": {"steps": 1, "tag": "two"}},
    ],
    "evaluators": [{"name": "echo", "after": ["base", "second"]}],
}


@pytest.fixture
def recipe_file(tmp_path, toy_plugins):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def test_load_and_override(recipe_file):
    r = load_recipe(recipe_file, ["stages.counter.steps=5", "stages.second.config.tag=z",
                                  "run.seed=7", "model=other", "evaluators.echo.items=4"])
    assert [s.id for s in r.stages] == ["counter", "second"]
    assert r.stages[0].config.steps == 5 and r.stages[1].config.tag == "z"
    assert r.run.seed == 7 and r.model.name_or_path == "other"
    assert r.evaluators[0].config.items == 4 and r.evaluators[0].after == ("base", "second")
    # The same recipe gives the same fingerprint; an override changes it.
    assert load_recipe(recipe_file).fingerprint() == load_recipe(recipe_file).fingerprint()
    assert load_recipe(recipe_file, ["run.seed=2"]).fingerprint() != load_recipe(recipe_file).fingerprint()
    # Moving device does not change results, so it does not change the fingerprint.
    assert load_recipe(recipe_file, ["run.device=cpu"]).fingerprint() == load_recipe(recipe_file).fingerprint()


def test_override_values_are_yaml():
    assert parse_override("a.b=1e-4") == (["a", "b"], "1e-4")  # converted by the float field
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=true") == (["a"], True)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stages.countr.steps=2"], r"stages\.countr: no such stage in the recipe; did you mean 'counter'"),
        (["stages.counter.stepz=2"], r"stages\.counter\.stepz: unknown key; did you mean 'steps'"),
        (["stages.counter.steps=two"], r"stages\.counter\.steps: expected int, got str 'two'"),
        (["stage.counter.steps=2"], r"unknown key 'stage'; did you mean 'stages'"),
        (["run.sed=2"], r"run\.sed: unknown key; did you mean 'seed'"),
        (["run.dtype=fp16"], r"run\.dtype: 'fp16' is not allowed"),
        (["evaluators.echo.after=[nowhere]"], r"evaluators\.echo\.after: 'nowhere' is not a stage id"),
        (["stages.counter=3"], r"use stages\.<id>\.<key>=value"),
    ],
)
def test_bad_overrides_fail_before_work(recipe_file, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe_file, overrides)


def test_bad_recipe_files(tmp_path, toy_plugins):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"model": "m", "stagse": []}))
    with pytest.raises(ConfigError, match="stagse: unknown top-level key; did you mean 'stages'"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"model": "m", "stages": [{"name": "cuonter"}]}))
    with pytest.raises(ConfigError, match="unknown stage 'cuonter'; did you mean 'counter'"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"stages": []}))
    with pytest.raises(ConfigError, match="model: required"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"model": "m", "stages": [{"name": "counter"}, {"name": "counter"}]}))
    with pytest.raises(ConfigError, match="used twice"):
        load_recipe(bad)


def test_apply_overrides_does_not_mutate():
    raw = {"model": "m", "stages": [{"name": "a", "config": {"x": 1}}]}
    new = apply_overrides(raw, ["stages.a.x=2", "model.revision=main"])
    assert raw["stages"][0]["config"]["x"] == 1 and raw["model"] == "m"
    assert new["stages"][0]["config"]["x"] == 2
    assert new["model"] == {"name_or_path": "m", "revision": "main"}


def test_evaluator_targets_are_checked_and_change_no_fingerprint(recipe_file):
    """``target: {metric: value}`` on an evaluator entry is kept for the report; it is
    result-neutral (no fingerprint moves, so changing it recomputes nothing) and settable
    by override; a non-mapping or a non-number is an error naming the key."""
    plain = load_recipe(recipe_file)
    aimed = load_recipe(recipe_file, ["evaluators.echo.target.random/accuracy=0.85", "evaluators.echo.target.f1=0.9"])
    assert dict(aimed.evaluators[0].target) == {"random/accuracy": 0.85, "f1": 0.9}
    assert aimed.to_dict()["evaluators"][0]["target"] == {"random/accuracy": 0.85, "f1": 0.9}
    assert "target" not in plain.to_dict()["evaluators"][0]
    assert aimed.fingerprint() == plain.fingerprint()
    assert aimed.point_fingerprints() == plain.point_fingerprints()
    whole = load_recipe(recipe_file, ["evaluators.echo.target={accuracy: 0.5}"])
    assert dict(whole.evaluators[0].target) == {"accuracy": 0.5}
    with pytest.raises(ConfigError, match=r"evaluators.echo.target.f1: expected a number, got 'high'"):
        load_recipe(recipe_file, ["evaluators.echo.target.f1=high"])
    with pytest.raises(ConfigError, match=r"evaluators.echo.target.f1: expected a number, got True"):
        load_recipe(recipe_file, ["evaluators.echo.target.f1=true"])
    with pytest.raises(ConfigError, match=r"evaluators.echo.target: expected a mapping of metric names"):
        load_recipe(recipe_file, ["evaluators.echo.target=0.9"])
    raw = yaml.safe_load(recipe_file.read_text())
    raw["evaluators"][0]["targets"] = {"f1": 0.9}
    recipe_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"evaluators.echo.targets: unknown key; did you mean 'target'"):
        load_recipe(recipe_file)
