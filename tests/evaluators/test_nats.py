"""The NAS-Bench-201 / NATS-Bench reader on tiny fake files written in the documented format
(``ArchResults``/``ResultsCount`` state dicts in bz2 pickles; the .pth form when torch is
installed)."""

import bz2
import importlib.util
import pickle

import jax
import numpy as np
import pytest

from nas_jax.evaluators.nats import read_nats
from nas_jax.evaluators.table import TableEvaluator
from nas_jax.spaces.nb201 import NB201Space

SPACE = NB201Space()
META = [SPACE.to_string(a) for a in SPACE.enumerate()]  # index -> string (any order works)
INDEXES = (0, 5, 11)
SEEDS = {"cifar10-valid": (777, 888), "cifar10": (777,), "cifar100": (777, 888, 999),
         "ImageNet16-120": (777,)}
SETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
        "cifar100": ("x-valid", "x-test", "ori-test"),
        "ImageNet16-120": ("x-valid", "x-test", "ori-test")}
NUM_SETS = {name: i for i, name in enumerate(("x-valid", "x-test", "ori-test"))}


def accuracy(index, dataset, seed, name, epoch, epochs):
    """A known value per (architecture, dataset, seed, set, epoch); the final epoch's is
    10 + index + set/10 + seed/10000 percent, earlier epochs are 1 percent lower."""
    base = 10 + index + NUM_SETS[name] / 10 + seed / 10000 + list(SEEDS).index(dataset) * 20
    return base - (epoch != epochs - 1) + (epochs == 12) * 5


def trial(index, dataset, seed, epochs):
    names = SETS[dataset]
    acc = {f"{n}@{e}": accuracy(index, dataset, seed, n, e, epochs)
           for n in names for e in range(epochs)}
    return {"name": dataset, "net_state_dict": None, "seed": seed, "epochs": epochs,
            "train_acc1es": dict.fromkeys(range(epochs), 50.0), "train_acc5es": None,
            "train_losses": {e: 2.0 - e / epochs for e in range(epochs)},
            "train_times": dict.fromkeys(range(epochs), 1.5), "params": 0.25 + index / 100,
            "flop": 30.0 + index, "latency": [0.01], "arch_config": {"arch_str": META[index]},
            "eval_names": list(names), "eval_acc1es": acc,
            "eval_losses": {k: v / 100 for k, v in acc.items()},
            "eval_times": dict.fromkeys(acc, 0.1)}


def arch_results(index, epochs):
    seeds = {d: list(s[: 1 + (index == 5)]) if d == "cifar10-valid" else list(s)
             for d, s in SEEDS.items()}  # architecture 5 has two cifar10-valid trials
    return {"arch_index": index, "arch_str": META[index], "dataset_seed": seeds,
            "all_results": {(d, s): trial(index, d, s, epochs) for d in seeds for s in seeds[d]},
            "clear_net_done": True}


def dump(obj, path):
    with bz2.BZ2File(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("nats")
    folder = root / "NATS-tss-v1_0-3ffb9-simple"
    folder.mkdir()
    dump({"meta_archs": META, "arch2infos": {}, "evaluated_indexes": set()},
         folder / "meta.pickle.pbz2")
    infos = {i: {"12": arch_results(i, 12), "200": arch_results(i, 200)} for i in INDEXES}
    for i, info in infos.items():
        dump(info, folder / f"{i:06d}.pickle.pbz2")
    single = root / "NATS-tss-v1_0-3ffb9.pickle.pbz2"
    dump({"meta_archs": META, "arch2infos": infos, "evaluated_indexes": set(INDEXES)}, single)
    return folder, single, infos


def test_reads_the_folder_form(files):
    table = read_nats(files[0], dataset="cifar10", epochs=200)
    np.testing.assert_array_equal(table.archs, SPACE.enumerate()[list(INDEXES)])
    assert table.metadata["rows"] == "architectures" and not table.complete
    assert table.space.channels == 16 and table.space.cells_per_stage == 5
    # cifar10: valid from cifar10-valid's x-valid, test from cifar10's ori-test, final epoch.
    expected_valid = [[(10 + i + 0.0 + s / 10000) / 100 for s in (777, 888)[: 1 + (i == 5)]]
                      for i in INDEXES]
    for row, values in enumerate(expected_valid):
        np.testing.assert_allclose(table.valid_accuracy[row, : len(values)], values, rtol=1e-6)
        assert np.all(np.isnan(table.valid_accuracy[row, len(values):]))
    np.testing.assert_allclose(table.test_accuracy[:, 0],
                               [(10 + i + 0.2 + 0.0777 + 20) / 100 for i in INDEXES], rtol=1e-6)
    np.testing.assert_array_equal(table.params, [round((0.25 + i / 100) * 1e6) for i in INDEXES])
    np.testing.assert_array_equal(table.flops, [round((30 + i) * 1e6) for i in INDEXES])
    np.testing.assert_allclose(table.train_seconds[:, 0], 300.0)
    np.testing.assert_allclose(table.train_loss[:, 0], 2.0 - 199 / 200, rtol=1e-6)


def test_single_file_epochs_and_datasets(files):
    folder, single, _ = files
    for dataset in ("cifar10-valid", "cifar100", "ImageNet16-120"):
        a = read_nats(folder, dataset=dataset, epochs=12)
        b = read_nats(single, dataset=dataset, epochs=12)
        np.testing.assert_array_equal(a.valid_accuracy, b.valid_accuracy)
        np.testing.assert_array_equal(a.test_accuracy, b.test_accuracy)
    offset = list(SEEDS).index("cifar100") * 20 + 5  # 12-epoch values are 5 points higher
    c100 = read_nats(single, dataset="cifar100", epochs=12)
    np.testing.assert_allclose(c100.valid_accuracy[0], [(10 + s / 10000 + offset) / 100
                                                        for s in (777, 888, 999)], rtol=1e-6)
    np.testing.assert_allclose(c100.test_accuracy[0, 0], (10.1 + 0.0777 + offset) / 100,
                               rtol=1e-6)
    assert read_nats(single, dataset="ImageNet16-120").space.input_shape == (16, 16, 3)


def test_lookup_keeps_isomorphic_cells_apart(files):
    """The benchmark trained each vector separately; no canonical merging."""
    ev = TableEvaluator(read_nats(files[0]), allow_partial=True)
    archs = SPACE.enumerate()[[5, 11, 1]]
    assert SPACE.canonical_key(archs[0]) == SPACE.canonical_key(archs[2])
    _, m = ev(jax.random.key(0), archs)
    np.testing.assert_array_equal(m["missing"], [False, False, True])


def test_errors_name_the_path_and_the_fix(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.*github.com/D-X-Y/NATS-Bench"):
        read_nats(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="meta.pickle.pbz2"):
        read_nats(tmp_path)
    with pytest.raises(ValueError, match="allowed: cifar10-valid"):
        read_nats(files[1], dataset="svhn")
    broken = tmp_path / "broken.pickle.pbz2"
    infos = {0: {"200": {**arch_results(0, 200), "dataset_seed": {"cifar10": [777]}}}}
    dump({"meta_archs": META, "arch2infos": infos, "evaluated_indexes": {0}}, broken)
    with pytest.raises(ValueError, match="architecture 0: no results for 'cifar10-valid'"):
        read_nats(broken)


def test_pth_form(files, tmp_path):
    path = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    infos = {i: {"less": v["12"], "full": v["200"]} for i, v in files[2].items()}
    data = {"meta_archs": META, "arch2infos": infos, "evaluated_indexes": list(INDEXES)}
    if importlib.util.find_spec("torch") is None:
        path.write_bytes(b"not read")
        with pytest.raises(ImportError, match="needs PyTorch"):
            read_nats(path)
        return
    import torch

    torch.save(data, path)
    np.testing.assert_array_equal(read_nats(path, epochs=12).valid_accuracy,
                                  read_nats(files[1], epochs=12).valid_accuracy)
