"""A PyTorch reference for the benchmarks, to measure on the same machine side by side.

Not part of nas_jax and not installed with it (needs ``pip install torch``); the numbers it
prints are the baseline that ``docs/benchmarks.md`` compares ``experiments/benchmark.py``
with. It builds the NAS-Bench-201 search network the way AutoDL's PyTorch code does (stem,
3 stages of N cells with C, 2C, 4C channels joined by residual reduction blocks, BN without
affine parameters in the search cells) and times, with 2 threads unless ``--threads``, on
the CPU unless ``--device`` names another (e.g. ``cuda``: the timers then wait for the
device):

- ``search``: seconds per step of DARTS first order (an architecture step on a valid batch,
  then a weight step on a train batch, every op of every edge computed), GDAS (a Gumbel
  hard sample per forward, only the sampled op of each edge computed) and one random
  single-path weight step, on the NB201 supernet C=16, N=5, 32x32x3, batch 64;
- ``population``: candidate-steps per second of 16 uniformly sampled cells trained one
  after another (only each cell's chosen ops), on the small (C=8, N=1, 16x16x3) and large
  (C=16, N=5, 32x32x3) workloads of ``configs/benchmark_population.py``, batch 64;
- ``darts_gdas``: seconds per GDAS step in the DARTS space, DARTS' search network (16
  initial channels, 8 cells, stem x3, affine-free BN, BN after pooling), 32x32x3, batch 64,
  only the sampled op of each of the 14 edges computed (AutoDL's GDAS forward), as
  ``--config.space=darts`` of ``configs/benchmark_darts.py`` measures ``gdas_composed``;
- ``floor``: each unit of the NB201 search network alone and the sum of their times per
  search step, as ``configs/benchmark_floor.py`` measures them for nas_jax.

    python experiments/reference_pytorch.py --what=search,population [--device=cuda]
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to node, from node), NB201 order


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride=1, affine=False):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2,
                                              bias=False), nn.BatchNorm2d(c_out, affine=affine))


class MixedEdge(nn.Module):
    """The four ops of an NB201 edge that compute something (``none`` contributes zero)."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = ReLUConvBN(channels, channels, 1)
        self.conv3 = ReLUConvBN(channels, channels, 3)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    def mixture(self, x, w):
        return w[1] * x + w[2] * self.conv1(x) + w[3] * self.conv3(x) + w[4] * self.pool(x)

    def single(self, x, op):
        name = OPS[op]
        if name == "none":
            return torch.zeros_like(x)
        if name == "skip_connect":
            return x
        return {"nor_conv_1x1": self.conv1, "nor_conv_3x3": self.conv3,
                "avg_pool_3x3": self.pool}[name](x)


class Cell(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.edges = nn.ModuleList(MixedEdge(channels) for _ in EDGES)

    def forward(self, x, weights, ops=None):
        nodes = [x]
        for node in range(1, 4):
            acc = 0
            for e, (dst, src) in enumerate(EDGES):
                if dst != node:
                    continue
                if ops is None:
                    acc = acc + self.edges[e].mixture(nodes[src], weights[e])
                else:
                    acc = acc + weights[e, ops[e]] * self.edges[e].single(nodes[src], ops[e])
            nodes.append(acc)
        return nodes[-1]


class Reduction(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.a = ReLUConvBN(c_in, c_out, 3, 2, affine=True)
        self.b = ReLUConvBN(c_out, c_out, 3, 1, affine=True)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        return self.shortcut(x) + self.b(self.a(x))


class Network(nn.Module):
    def __init__(self, channels, cells_per_stage, in_channels=3, classes=10):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c))
        layers = []
        for stage, ch in enumerate((c, 2 * c, 4 * c)):
            if stage:
                layers.append(Reduction(ch // 2, ch))
            layers.extend(Cell(ch) for _ in range(cells_per_stage))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(nn.BatchNorm2d(4 * c), nn.ReLU())
        self.classifier = nn.Linear(4 * c, classes)
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(OPS)))

    def forward(self, x, weights, ops=None):
        h = self.stem(x)
        for layer in self.layers:
            h = layer(h, weights, ops) if isinstance(layer, Cell) else layer(h)
        return self.classifier(self.head(h).mean((2, 3)))

    def weight_parameters(self):
        return [p for name, p in self.named_parameters() if name != "alpha"]


# ----------------------------------------------------------------------------- DARTS space

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
             "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def _dil_conv(c, kernel, stride, dilation):
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, kernel, stride, dilation * (kernel - 1) // 2,
                                              dilation=dilation, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))


class FactorizedReduce(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.a = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.b = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=False)

    def forward(self, x):
        x = F.relu(x)
        return self.bn(torch.cat([self.a(x), self.b(x[:, :, 1:, 1:])], 1))


class DartsEdge(nn.Module):
    """Every op of a DARTS edge; ``forward`` computes only the sampled one."""

    def __init__(self, c, stride):
        super().__init__()
        self.stride = stride
        self.ops = nn.ModuleDict({
            "max_pool_3x3": nn.Sequential(nn.MaxPool2d(3, stride, 1),
                                          nn.BatchNorm2d(c, affine=False)),
            "avg_pool_3x3": nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False),
                                          nn.BatchNorm2d(c, affine=False)),
            "skip_connect": nn.Identity() if stride == 1 else FactorizedReduce(c, c),
            "sep_conv_3x3": nn.Sequential(_dil_conv(c, 3, stride, 1), _dil_conv(c, 3, 1, 1)),
            "sep_conv_5x5": nn.Sequential(_dil_conv(c, 5, stride, 1), _dil_conv(c, 5, 1, 1)),
            "dil_conv_3x3": _dil_conv(c, 3, stride, 2),
            "dil_conv_5x5": _dil_conv(c, 5, stride, 2)})

    def forward(self, x, op):
        return self.ops[DARTS_OPS[op]](x)


class DartsCell(nn.Module):
    def __init__(self, c_pp, c_p, c, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.pre0 = (FactorizedReduce(c_pp, c) if reduction_prev else
                     ReLUConvBN(c_pp, c, 1))
        self.pre1 = ReLUConvBN(c_p, c, 1)
        self.edges = nn.ModuleList(DartsEdge(c, 2 if reduction and src < 2 else 1)
                                   for node in range(4) for src in range(node + 2))

    def forward(self, s0, s1, weights, ops):
        states, e = [self.pre0(s0), self.pre1(s1)], 0
        for node in range(4):
            acc = 0
            for src in range(node + 2):
                if DARTS_OPS[ops[e]] != "none":
                    acc = acc + weights[e, ops[e]] * self.edges[e](states[src], ops[e])
                e += 1
            if not torch.is_tensor(acc):  # every op into the node is `none`
                ref = states[1][:, :, ::2, ::2] if self.reduction else states[1]
                acc = torch.zeros_like(ref)
            states.append(acc)
        return torch.cat(states[2:], 1)


class DartsNetwork(nn.Module):
    def __init__(self, c=16, cells=8, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3 * c, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(3 * c))
        c_pp, c_p, reduction_prev, layers = 3 * c, 3 * c, False, []
        for i in range(cells):
            reduction = i in (cells // 3, 2 * cells // 3)
            c = 2 * c if reduction else c
            layers.append(DartsCell(c_pp, c_p, c, reduction, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, 4 * c, reduction
        self.cells = nn.ModuleList(layers)
        self.classifier = nn.Linear(c_p, classes)
        self.alpha = nn.Parameter(1e-3 * torch.randn(2, 14, len(DARTS_OPS)))

    def forward(self, x, weights, ops):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            kind = int(cell.reduction)
            s0, s1 = s1, cell(s0, s1, weights[kind], ops[kind])
        return self.classifier(s1.mean((2, 3)))

    def weight_parameters(self):
        return [p for name, p in self.named_parameters() if name != "alpha"]


def time_darts_gdas(steps=3):
    net = DartsNetwork().to(DEVICE)
    w_opt, a_opt = _optimizers(net)
    (xt, yt), (xv, yv) = _batches(32)

    def gdas():
        weights, ops = _hard_sample(net.alpha)
        w_opt.zero_grad()
        F.cross_entropy(net(xt, weights, ops), yt).backward()
        nn.utils.clip_grad_norm_(net.weight_parameters(), 5)
        w_opt.step()
        a_opt.zero_grad()
        weights, ops = _hard_sample(net.alpha)
        F.cross_entropy(net(xv, weights, ops), yv).backward()
        a_opt.step()

    _time_steps("darts space gdas", gdas, steps)


def _optimizers(net):
    weights = torch.optim.SGD(net.weight_parameters(), 0.025, momentum=0.9, weight_decay=3e-4,
                              nesterov=True)
    arch = torch.optim.Adam([net.alpha], 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    return weights, arch


DEVICE = torch.device("cpu")  # set by --device


def _sync():
    """Wait for the device's queued work, so a timer reads finished work."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _hard_sample(alpha, tau=10.0):
    """GDAS' straight-through Gumbel sample: one-hot forward, soft gradients; the arg-max op
    per edge as a list."""
    gumbel = -torch.empty_like(alpha).exponential_().log()
    probs = F.softmax((F.log_softmax(alpha, -1) + gumbel) / tau, -1)
    idx = probs.argmax(-1)
    return F.one_hot(idx, alpha.shape[-1]).float() - probs.detach() + probs, idx.tolist()


def _time_steps(label, step, steps):
    """One warm-up call of ``step``, then print the mean seconds of ``steps`` more."""
    step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    print(f"{label:24s} {(time.perf_counter() - t0) / steps:8.3f} s/step", flush=True)


def _batches(size, n=2):
    return [(torch.randn(64, 3, size, size, device=DEVICE),
             torch.randint(0, 10, (64,), device=DEVICE)) for _ in range(n)]


def time_search(steps=3):
    net = Network(16, 5).to(DEVICE)
    w_opt, a_opt = _optimizers(net)
    (xt, yt), (xv, yv) = _batches(32)

    def weight_step(weights, ops=None):
        w_opt.zero_grad()
        F.cross_entropy(net(xt, weights, ops), yt).backward()
        nn.utils.clip_grad_norm_(net.weight_parameters(), 5)
        w_opt.step()

    def darts1():
        a_opt.zero_grad()
        F.cross_entropy(net(xv, F.softmax(net.alpha, -1)), yv).backward()
        a_opt.step()
        weight_step(F.softmax(net.alpha, -1).detach())

    def gdas():
        weights, ops = _hard_sample(net.alpha)
        weight_step(weights, ops)
        a_opt.zero_grad()
        weights, ops = _hard_sample(net.alpha)
        F.cross_entropy(net(xv, weights, ops), yv).backward()
        a_opt.step()

    def random_path():
        idx = torch.randint(0, len(OPS), (len(EDGES),), device=DEVICE)
        weight_step(F.one_hot(idx, len(OPS)).float(), idx.tolist())

    for name, step in (("darts1", darts1), ("gdas", gdas), ("random_path", random_path)):
        _time_steps(f"search      {name}", step, steps)


def time_population(name, channels, cells, size, steps, candidates=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    archs = torch.randint(0, len(OPS), (candidates, len(EDGES)), generator=gen).tolist()
    (x, y), = _batches(size, 1)
    _sync()
    t0 = time.perf_counter()
    for ops in archs:
        net = Network(channels, cells).to(DEVICE)
        opt = torch.optim.SGD(net.weight_parameters(), 0.05, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        weights = F.one_hot(torch.tensor(ops, device=DEVICE), len(OPS)).float()
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x, weights, ops), y).backward()
            nn.utils.clip_grad_norm_(net.weight_parameters(), 5)
            opt.step()
    _sync()
    seconds = time.perf_counter() - t0
    print(f"population  {name:12s} {candidates * steps / seconds:8.2f} candidate-steps/s "
          f"({candidates} x {steps} steps in {seconds:.1f} s)", flush=True)


def _seconds(fn, repeats):
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def time_floor(repeats=20, channels=16, cells=5, size=32, batch=64):
    """Each unit of the NB201 search network alone, forward and backward (``weights``: with
    respect to inputs and weights; ``inputs``: inputs only), and each method's floor, as
    ``nas_jax.floor_benchmark`` computes them for nas_jax (the same units, names and cell
    op counts)."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from nas_jax.floor_benchmark import METHODS, cell_counts, floors
    from nas_jax.spaces.nb201 import NB201Space

    def act(*shape):
        return torch.randn(batch, *shape, device=DEVICE)

    units = {}
    c, h = channels, size
    units["stem"] = (nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(c)), (act(3, h, h),), "stem")
    for stage, ch in enumerate((c, 2 * c, 4 * c)):
        if stage:
            units[f"reduction{stage}"] = (Reduction(ch // 2, ch), (act(ch // 2, h, h),),
                                          "fixed")
            h = (h + 1) // 2
        tag = f"@{h}x{h}x{ch}"
        units["nor_conv_3x3" + tag] = (ReLUConvBN(ch, ch, 3), (act(ch, h, h),), "cell")
        units["nor_conv_1x1" + tag] = (ReLUConvBN(ch, ch, 1), (act(ch, h, h),), "cell")
        units["avg_pool_3x3" + tag] = (nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                       (act(ch, h, h),), "cell")
        units["add" + tag] = (lambda a, b: a + b, (act(ch, h, h), act(ch, h, h)), "cell")
        w = torch.tensor(0.3, device=DEVICE)
        units["axpy" + tag] = (lambda a, b, w=w: a + w * b, (act(ch, h, h), act(ch, h, h), w),
                               "scale")
    head = nn.Sequential(nn.BatchNorm2d(4 * c), nn.ReLU())
    classifier = nn.Linear(4 * c, 10)
    labels = torch.arange(batch, device=DEVICE) % 10

    def head_fn(x, head=head, classifier=classifier):
        return F.cross_entropy(classifier(head(x).mean((2, 3))), labels)

    head_fn.parameters = lambda: [*head.parameters(), *classifier.parameters()]
    units["head"] = (head_fn, (act(4 * c, h, h),), "fixed")

    table = {}
    for name, (module, inputs, kind) in units.items():
        if isinstance(module, nn.Module):
            module.to(DEVICE)
        params = list(module.parameters()) if hasattr(module, "parameters") else []
        table[name] = {}
        for which in ("weights", "inputs"):
            forward_only = kind == "stem" and which == "inputs"
            for p in params:
                p.requires_grad_(which == "weights")
            for t in inputs:  # (the scale's weight is an input: its gradient in both passes)
                t.requires_grad_(kind != "stem")

            def run(module=module, inputs=inputs, params=params, forward_only=forward_only):
                for t in (*inputs, *params):
                    t.grad = None
                if forward_only:
                    with torch.no_grad():
                        return module(*inputs)
                out = module(*inputs)
                out.backward(torch.ones_like(out))

            table[name][which] = _seconds(run, repeats)
        print(f"floor unit  {name:24s} weights {1e3 * table[name]['weights']:8.3f} ms  "
              f"inputs {1e3 * table[name]['inputs']:8.3f} ms", flush=True)
    space = NB201Space(channels=channels, cells_per_stage=cells, input_shape=(size, size, 3),
                       num_classes=10)
    for method in METHODS:
        counts = ", ".join(f"{k} {v:.2f}" for k, v in cell_counts(method).items() if v)
        print(f"floor       {method:12s} {floors(space, table, method):8.3f} s/step  ({counts})",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", default="search,population")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {DEVICE}"
          + (f" ({torch.cuda.get_device_name(DEVICE)})" if DEVICE.type == "cuda" else ""),
          flush=True)
    what = args.what.split(",")
    if "search" in what:
        time_search()
    if "population" in what:
        time_population("small", 8, 1, 16, 50)
        time_population("large", 16, 5, 32, 10)
    if "darts_gdas" in what:
        time_darts_gdas(steps=10)
    if "floor" in what:
        time_floor()


if __name__ == "__main__":
    main()
