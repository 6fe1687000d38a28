import pytest

from ftib.core import PluginError, Registry
from ftib.core.registry import AUTOLOAD_ENV, EVALUATORS, REWARDS, STAGES


def test_third_party_plugins_are_discovered(toy_plugins):
    reg = Registry()
    assert "counter" in reg.names(STAGES)
    assert "echo" in reg.names(EVALUATORS)
    spec = reg.spec(REWARDS, "toy-length")
    assert spec.dist == "ftib-toy" and not spec.builtin
    cls = reg.load(STAGES, "counter")
    assert cls.__name__ == "CounterStage"
    cls = reg.load(REWARDS, "toy-length")
    reward = cls(cls.Config(scale=2.0))
    assert reward(["p"], ["abc"], ["r"], [{}]).tolist() == [6.0]


def test_duplicate_name_names_both_providers(toy_plugins, install_dist):
    install_dist("other-dist", {STAGES: {"counter": "other_mod:Counter"}})
    with pytest.raises(PluginError) as err:
        Registry().names(STAGES)
    msg = str(err.value)
    assert "'counter'" in msg and "ftib_toy:CounterStage" in msg and "other_mod:Counter" in msg
    assert "ftib-toy" in msg and "other-dist" in msg


def test_unknown_name_suggests_closest(toy_plugins):
    with pytest.raises(PluginError, match=r"unknown stage 'countr'; did you mean 'counter'"):
        Registry().load(STAGES, "countr")


def test_unknown_group_is_an_error():
    with pytest.raises(PluginError, match="ftib.stages"):
        Registry().specs("ftib.stage")


def test_disable_autoload_keeps_only_builtins(toy_plugins, monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    reg = Registry()
    assert "counter" not in reg.names(STAGES)
    assert all(s.builtin for g in (STAGES, EVALUATORS, REWARDS) for s in reg.specs(g).values())
    with pytest.raises(PluginError, match=AUTOLOAD_ENV):
        reg.load(STAGES, "counter")
    monkeypatch.setenv(AUTOLOAD_ENV, "0")
    assert "counter" in Registry().names(STAGES)


def test_wrong_role_and_mutable_config_are_rejected(install_dist, toy_plugins):
    install_dist("bad-dist", {STAGES: {"bad": "ftib_toy:NotAStage", "mutable": "ftib_toy:MutableConfigStage",
                                       "missing": "ftib_toy_missing:Thing"}})
    reg = Registry()
    with pytest.raises(PluginError, match="must be a subclass of ftib.core.Stage"):
        reg.load(STAGES, "bad")
    with pytest.raises(PluginError, match="frozen dataclass"):
        reg.load(STAGES, "mutable")
    with pytest.raises(PluginError, match="cannot import .*'missing'.*bad-dist"):
        reg.load(STAGES, "missing")
