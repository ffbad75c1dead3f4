"""One diagnostic pass: figures against direct computations, precision and overflow guards."""

import copy
import math
from functools import partial

import torch
import torch.nn.functional as F

from faeval.backbones import ResMLP
from faeval.diagnostics import measure_layers
from faeval.methods import BP, DFA
from faeval.runlog import summarize
from tests.helpers import reference_states


def _dfa(**kwargs):
    return DFA((12,), 4, backbone=partial(ResMLP, d_hidden=16, num_blocks=3, **kwargs))


def test_measure_matches_a_direct_computation():
    torch.manual_seed(0)
    method = _dfa(w2_std=0.2)
    x, y = torch.randn(64, 12), torch.randint(0, 4, (64,))
    states, logits = reference_states(method.backbone, x)
    F.cross_entropy(logits, y).backward()
    e = torch.softmax(logits.detach(), 1) - F.one_hot(y, 4)
    fig = measure_layers(method, x, y)
    for l, h in enumerate(states):
        a = e @ method.feedback[l]
        g = h.grad
        assert math.isclose(fig.h_norm[l], h.detach().norm(dim=1).mean().item(), rel_tol=1e-5)
        assert math.isclose(fig.g_norm[l], g.norm(dim=1).mean().item(), rel_tol=1e-5)
        cos = ((a * g).sum(1) / (a.norm(dim=1) * g.norm(dim=1))).mean().item()
        assert math.isclose(fig.cos[l], cos, rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(fig.loss, F.cross_entropy(logits, y).item(), rel_tol=1e-6)


def test_diagnostics_run_in_float32_whatever_the_training_precision():
    """fp16 turns tiny gradients to zero; a half-precision model is measured in float32."""
    torch.manual_seed(0)
    method16 = BP((12,), 4, backbone=partial(ResMLP, d_hidden=16, num_blocks=3))
    with torch.no_grad():
        method16.backbone.head.weight.mul_(1e-4)  # ‖g‖ ~ 1e-8 and rows below fp16's range
    method16.half()
    method32 = copy.deepcopy(method16).float()  # the same (fp16-representable) weights
    x, y = torch.randn(256, 12), torch.randint(0, 4, (256,))
    fig16, fig32 = measure_layers(method16, x, y), measure_layers(method32, x, y)
    assert next(method16.parameters()).dtype == torch.float16  # cast back after the pass
    assert all(1e-10 < g < 1e-6 for g in fig16.g_norm)
    for g16, g32 in zip(fig16.g_norm, fig32.g_norm, strict=True):
        assert math.isclose(g16, g32, rel_tol=1e-6)
    assert all(abs(c - 1) < 1e-5 for c in fig16.cos)


def test_a_floor_hit_makes_every_cosine_unmeasurable():
    fig = measure_layers(_dfa(), torch.randn(32, 12), torch.randint(0, 4, (32,)))
    healthy = summarize(fig, fig.h_norm, grad_floor=1e-7)
    assert not healthy["floor_hit"] and all(c is not None for c in healthy["cos"])
    fig.g_norm[-1] = 5e-8
    hit = summarize(fig, fig.h_norm, grad_floor=1e-7)
    assert hit["floor_hit"] and hit["cos"] == [None] * len(fig.cos)
    assert hit["gamma"] is None and hit["cos_deep"] is None and hit["cos_l0"] is None


def test_growth_is_the_largest_ratio_to_initialisation():
    fig = measure_layers(_dfa(), torch.randn(32, 12), torch.randint(0, 4, (32,)))
    init = [v / 2 for v in fig.h_norm]
    init[2] = fig.h_norm[2] / 80
    row = summarize(fig, init, grad_floor=1e-7)
    assert math.isclose(row["growth"], 80.0)
    assert math.isclose(row["h_ratio"][0], fig.h_norm[1] / fig.h_norm[0])


def test_overflowing_activations_are_reported_non_finite_and_the_floor_fires():
    torch.manual_seed(0)
    method = _dfa()
    with torch.no_grad():
        method.backbone.embed[1].weight.fill_(3e38)
    fig = measure_layers(method, torch.randn(8, 12), torch.randint(0, 4, (8,)))
    row = summarize(fig, [1.0] * len(fig.h_norm), grad_floor=1e-7)
    assert row["nonfinite"] and row["floor_hit"] and row["cos"] == [None] * len(fig.cos)
