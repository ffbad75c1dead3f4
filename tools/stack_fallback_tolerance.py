"""Measure: seeds stacked through the torch.func fallback against their lone runs.

Usage:
    PYTHONPATH=. python tools/stack_fallback_tolerance.py [--k 3] [--batch 8] [--steps 5]
        [--lr 1e-2] [--dtype float32]

Networks of modules faeval.stacked does not know, as ``tests.helpers`` builds them (run from
the checkout): ``gated`` (branches with their own gain parameter and a trained activation, a
trained activation in the readout), ``skip-inside`` (ordinary layers inside a block class that
adds its own skip) and ``batchnorm`` (BatchNorm inside a branch class: running statistics
updated in place). For each network and method, K seeds are built as their lone runs build
them, stacked (``faeval.stacked.stack_methods``), and trained with the method's own optimizer
(fused Adam at ``--lr``) on the same batches as K lone runs. Printed per row: the largest
absolute difference of any seed's gradient after the first step and of its parameters and
buffers after ``--steps`` steps, the largest relative one (over elements at least 1e-3 of their
tensor's largest magnitude), and the share of the documented tolerance used
(``|d| / (atol + rtol·|lone|)`` with ``FALLBACK_GRAD_TOL`` for the gradients and
``FALLBACK_STATE_TOL`` for the state; at most 1 to pass).
"""

from __future__ import annotations

import argparse
import functools
import logging

import torch

from faeval.methods import BP, DFA, FA, CreditBridge, StateBridge
from faeval.stacked import stack_methods
from faeval.stacked.fallback import FALLBACK_GRAD_TOL, FALLBACK_STATE_TOL
from tests.helpers import (
    trained_first_gradients,
    wrap_gated_net,
    wrap_norm_net,
    wrap_plain_resnet,
)

NETS = {
    "gated": wrap_gated_net,
    "skip-inside": functools.partial(wrap_plain_resnet, skip_inside=True),
    "batchnorm": wrap_norm_net,
}
METHODS = {
    "BP": (BP, {}),
    "FA": (FA, {}),
    "DFA": (DFA, {}),
    "StateBridge": (StateBridge, {"bridge_width": 8}),
    "CreditBridge": (CreditBridge, {"value_width": 8, "warmup_epochs": 0}),
}


def build(method: str, net: str, seed: int, lr: float, dtype: torch.dtype):
    cls, kwargs = METHODS[method]
    torch.manual_seed(seed)
    optimizer = functools.partial(torch.optim.Adam, lr=lr)
    return cls((12,), 4, backbone=NETS[net], optimizer=optimizer, **kwargs).to(dtype).train()


def differences(pairs, tol: dict) -> tuple[float, float, float]:
    """Largest |d|, largest relative |d|/|lone| and largest share of the tolerance."""
    worst_abs = worst_rel = worst_share = 0.0
    for got, want in pairs:
        d = (got.double() - want.double()).abs()
        ref = want.double().abs()
        worst_abs = max(worst_abs, float(d.max()))
        big = ref >= 1e-3 * float(ref.max())
        if big.any() and float(ref.max()) > 0:
            worst_rel = max(worst_rel, float((d[big] / ref[big]).max()))
        worst_share = max(worst_share, float((d / (tol["atol"] + tol["rtol"] * ref)).max()))
    return worst_abs, worst_rel, worst_share


def measure(method: str, net: str, args, dtype: torch.dtype) -> tuple:
    k, b = args.k, args.batch
    gen = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(k * b, 12, generator=gen).to(dtype),
            torch.randint(0, 4, (k * b,), generator=gen),
        )
        for _ in range(args.steps)
    ]
    stacked = stack_methods([build(method, net, s, args.lr, dtype) for s in range(k)])
    grads = trained_first_gradients(stacked, batches)
    state = stacked.state_dict()
    grad_pairs, state_pairs = [], []
    for seed in range(k):
        lone = build(method, net, seed, args.lr, dtype)
        lone_grads = trained_first_gradients(
            lone, [(x[seed * b : (seed + 1) * b], y[seed * b : (seed + 1) * b]) for x, y in batches]
        )
        grad_pairs += [(grads[n][seed], g) for n, g in lone_grads.items()]
        state_pairs += [
            (state[n][seed], v) for n, v in lone.state_dict().items() if v.is_floating_point()
        ]
    return differences(grad_pairs, FALLBACK_GRAD_TOL), differences(state_pairs, FALLBACK_STATE_TOL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    logging.getLogger("faeval").setLevel(logging.ERROR)  # the fallback's notice, once per stack
    dtype = getattr(torch, args.dtype)
    print(
        f"K={args.k} B={args.batch} steps={args.steps} Adam lr={args.lr} {args.dtype}; "
        f"tolerances: gradients {FALLBACK_GRAD_TOL}, state {FALLBACK_STATE_TOL}"
    )
    print(
        f"{'network':12} {'method':12} {'grad abs':>9} {'grad rel':>9} {'share':>6} "
        f"{'state abs':>9} {'state rel':>9} {'share':>6}"
    )
    for net in NETS:
        for method in METHODS:
            (ga, gr, gs), (sa, sr, ss) = measure(method, net, args, dtype)
            print(
                f"{net:12} {method:12} {ga:9.1e} {gr:9.1e} {gs:6.3f} {sa:9.1e} {sr:9.1e} {ss:6.3f}"
            )


if __name__ == "__main__":
    main()
