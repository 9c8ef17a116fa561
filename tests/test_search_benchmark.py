"""The search-step benchmark's plumbing on a tiny supernet (timings are not asserted;
random_path_composed runs in tests/test_benchmark_script.py)."""

import json

import pytest

from nas_jax.search_benchmark import run_search_benchmark, search_benchmark_config


def test_times_each_method_and_writes_json(tmp_path):
    c = search_benchmark_config()
    c.channels, c.cells_per_stage, c.input_shape, c.batch_size, c.steps = 2, 1, (8, 8, 3), 4, 1
    # one jitted method (each costs an init and compiles; the composed GDAS step is tested
    # in tests/strategies/test_gdas_composed.py)
    c.methods = ("random_path",)
    c.steps_of.random_path = 2  # overrides c.steps for that method
    c.fast_compile = True
    lines = []
    out = run_search_benchmark(c, str(tmp_path), log=lines.append)
    assert [r["method"] for r in out["rows"]] == ["random_path"]
    assert [r["timed_steps"] for r in out["rows"]] == [2]
    for row in out["rows"]:
        assert row["finite"] and row["first_call_s"] > 0 and row["seconds_per_step"] > 0
    assert json.loads((tmp_path / "search_benchmark.json").read_text())["rows"] == out["rows"]
    assert any(line.startswith("random_path") for line in lines)


def test_unknown_method_is_named():
    c = search_benchmark_config()
    c.methods = ("darts3",)
    with pytest.raises(ValueError, match="config.methods: 'darts3'"):
        run_search_benchmark(c)


def test_bad_steps_of_is_named():
    c = search_benchmark_config()
    c.steps_of.darts2 = 0
    with pytest.raises(ValueError, match="config.steps_of.darts2: 0; give a method"):
        run_search_benchmark(c)


def test_cpu_default_leaves_out_the_mixture_gdas():
    from nas_jax.search_benchmark import METHODS, default_methods

    assert set(METHODS) - set(default_methods()) == {"gdas"}  # tests run on CPU
    assert search_benchmark_config().steps_of.darts2 == 1


def test_methods_and_space_are_checked_for_the_darts_space():
    c = search_benchmark_config()
    c.space, c.methods = "darts", ("gdas_composed", "gdas_switch")
    with pytest.raises(ValueError, match="config.methods: 'gdas_switch'; allowed in the "
                                         "DartsSpace: darts1, darts2, gdas, gdas_composed"):
        run_search_benchmark(c)
    c.space = "nasnet"
    with pytest.raises(ValueError, match="config.space='nasnet'; allowed: nb201, darts"):
        run_search_benchmark(c)


def test_profile_step_names_the_methods_it_can_profile():
    """experiments/profile_step.py profiles one jitted program: the composed methods are
    refused with the ones it can profile named, before anything is built."""
    from nas_jax.search_benchmark import benchmark_space, compiled_step

    c = search_benchmark_config()
    c.channels, c.cells_per_stage = 2, 1
    space, described = benchmark_space(c)
    assert described == "NB201 C=2 N=1"
    with pytest.raises(ValueError, match="'gdas_composed' runs as many programs composed on "
                       "the host.*darts1, darts2, gdas, gdas_switch, random_path$"):
        compiled_step(space, "gdas_composed", None)
