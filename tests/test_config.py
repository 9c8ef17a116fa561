"""Config validation: a wrong config stops at start-up with one line naming the field."""

import os
import subprocess
import sys

import ml_collections
import pytest

from nas_jax.config import ConfigError, parse_baselines, search_config, validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
    """The default schema with ``section__field`` overrides, written the way a config file
    that builds a section from a dict would (so ConfigDict's own type checks do not apply)."""
    c = search_config()
    for path, value in overrides.items():
        section, name = path.split("__")
        c[section] = ml_collections.ConfigDict({**c[section].to_dict(), name: value})
    return c


CASES = [
    ({"strategy__name": "evolutionn"}, "config.strategy.name='evolutionn'",
     "regularized_evolution"),
    ({"space__name": "nb202"}, "config.space.name='nb202'", "nb201"),
    ({"dataset__name": "cifar11"}, "config.dataset.name='cifar11'", "digits"),
    ({"evaluator__name": "oracle"}, "config.evaluator.name='oracle'", "population"),
    ({"budget__num_evaluations": -5}, "config.budget.num_evaluations=-5", "> 0"),
    ({"budget__num_evaluations": 0}, "config.budget.num_evaluations=0", "> 0"),
    ({"strategy__population_size": 20000}, "config.strategy.population_size=20000",
     "15625"),
    ({"strategy__sample_size": 50}, "config.strategy.sample_size=50", "population_size"),
    ({"strategy__batch_size": 0}, "config.strategy.batch_size=0", "> 0"),
    ({"evaluator__steps": 0}, "config.evaluator.steps=0", "> 0"),
    ({"evaluator__learning_rate": -0.1}, "config.evaluator.learning_rate=-0.1", "> 0"),
    ({"evaluator__optimizer": "adamw"}, "config.evaluator.optimizer='adamw'", "sgd, adam"),
    ({"evaluator__execution": "fast"}, "config.evaluator.execution='fast'", "loop"),
    ({"dataset__valid_fraction": 1.5}, "config.dataset.valid_fraction=1.5", "(0, 1)"),
    ({"space__channels": "8"}, "config.space.channels='8'", "must be int"),
    ({"space__cells_per_stage": 2.5}, "config.space.cells_per_stage=2.5", "must be int"),
    ({"retrain__steps": -1}, "config.retrain.steps=-1", ">= 0"),
    ({"space__ops": ("skip_connect", "none")}, "config.space (space 'nb201'): NB201Space.ops",
     "at least 2 distinct operations of none, skip_connect"),
    ({"checkpoint__every_rounds": 0}, "config.checkpoint.every_rounds=0", "> 0"),
    ({"strategy__batch_size": 100, "budget__num_evaluations": 10},
     "config.strategy.batch_size=100", "num_evaluations"),
]


@pytest.mark.parametrize("overrides, field, allowed", CASES,
                         ids=[c[1].split("=")[0] for c in CASES])
def test_bad_value_names_field_and_allowed(overrides, field, allowed):
    with pytest.raises(ConfigError) as err:
        validate(_config(**overrides))
    message = str(err.value)
    assert message.startswith(field), message
    assert allowed in message, message
    assert "\n" not in message


def test_mistyped_field_is_rejected():
    c = search_config()
    with c.strategy.unlocked():
        c.strategy.populaton_size = 10
    with pytest.raises(ConfigError, match=r"config.strategy.populaton_size: unknown field; "
                                          r"allowed here: .*population_size"):
        validate(c)


def test_mistyped_section_is_rejected():
    c = search_config()
    c.strateg = ml_collections.ConfigDict({"name": "random_search"})
    with pytest.raises(ConfigError, match=r"config.strateg: unknown field"):
        validate(c)


def test_int_accepted_for_float_field_and_default_is_valid():
    validate(_config(evaluator__learning_rate=1))
    validate(search_config())


def test_default_config_file_is_valid():
    from configs import default

    validate(default.get_config())


@pytest.mark.parametrize("name, arg", [("macro_cnn_mnist1d", None),
                                       ("search_mnist1d_from_meta", None),
                                       ("search_mnist1d_from_meta", "scratch")])
def test_shipped_search_configs_are_valid(name, arg):
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config(arg)
    validate(config)
    if name == "search_mnist1d_from_meta":  # :scratch differs only in the start
        assert bool(config.strategy.init_from) == (arg is None)


def test_entry_point_reports_one_line_before_any_work(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "search.py"),
         f"--config={os.path.join(REPO, 'configs', 'default.py')}",
         "--config.strategy.name=evolutionn", f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("config error:")]
    assert errors == [
        "config error: config.strategy.name='evolutionn': unknown strategy; allowed: "
        "random_search, regularized_evolution, genetic_algorithm, reinforce"
    ], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


def test_composed_execution_needs_a_cell_space():
    validate(_config(evaluator__execution="composed"))
    validate(_config(space__name="darts", evaluator__execution="composed"))
    with pytest.raises(ConfigError, match=r"config.evaluator.execution='composed': the mlp "
                                          r"network has no composed form \(nb201 and darts"):
        validate(_config(space__name="mlp", evaluator__execution="composed"))


def test_switch_execution_needs_a_network_with_a_switch_mode():
    validate(_config(evaluator__execution="switch"))
    with pytest.raises(ConfigError, match=r"config.evaluator.execution='switch': the darts "
                                          r"network has no switch mode"):
        validate(_config(space__name="darts", evaluator__execution="switch"))


def test_every_registered_space_builds_from_the_default_schema():
    from nas_jax import registry

    for name in registry.SPACES.names():
        space = registry.SPACES.build(name, search_config().space)
        assert space.size >= 1
        assert space.num_decisions == len(space.num_choices)


@pytest.mark.parametrize("entry, message", [
    ("mlp(32,relu)", "must be 'SPACE:ARCH'"),
    ("nope:mlp(32,relu)", "unknown space"),
    ("mlp:mlp(33,relu)", "not a mlp architecture"),
])
def test_bad_baselines_name_the_entry(entry, message):
    config = search_config()
    config.baselines = (entry,)
    with pytest.raises(ConfigError, match=r"config\.baselines\[0\].*" + message):
        validate(config)


def test_baselines_parse():
    config = search_config()
    config.baselines = ("mlp:mlp(64,relu|32,tanh)",)
    [(name, space, arch)] = parse_baselines(config)
    assert name == "mlp" and space.to_string(arch) == "mlp(64,relu|32,tanh)"
