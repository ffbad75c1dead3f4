"""PEPITA against the paper's algorithm (Dellaferrera & Kreiman 2022, Algorithm 1, as the
GiorgiaD/PEPITA code runs it) worked by hand on tiny nets in float64."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from faeval.backbones import ResMLP
from faeval.errors import ConfigError
from faeval.methods import PEPITA
from tests.helpers import LinearNet


def plain_linear(input_shape, num_classes):
    """h_0 = W_0 x + b_0, h_l = W_l h_{l-1} + b_l, logits = W_h h_L + b_h: one layer a block."""
    return LinearNet(input_shape, num_classes, d=5, num_blocks=2, residual_add=False)


def pepita_by_hand(layers, head, F_, x, y):
    """The paper's ΔW for each (W, b) of a chain of linear layers and the head.

    Forward pass: h_l = W_l h_{l-1} + b_l (h_{-1} = x), out = softmax(W_h h_L + b_h),
    e = out − onehot(y). Modulated pass on x + e·F. ΔW_l = mean_i (h_l − h_l^mod) (h_{l-1}^mod)ᵀ,
    Δb_l = mean_i (h_l − h_l^mod); the head's ΔW = mean_i e^mod (h_L^mod)ᵀ, e^mod the
    modulated pass's error (the code's ``mod_error``). The step is W −= η·ΔW.
    """

    def run(inp):
        hs = [inp]
        for w, b in layers:
            hs.append(hs[-1] @ w.T + b)
        out = torch.softmax(hs[-1] @ head[0].T + head[1], 1)
        return hs, out - F.one_hot(y, out.shape[1]).double()

    hs, e = run(x)
    mods, e_mod = run(x + e @ F_)
    n = len(y)
    deltas = []
    for l in range(len(layers)):
        diff = hs[l + 1] - mods[l + 1]  # (B, d_out)
        deltas.append((diff.T @ mods[l] / n, diff.mean(0)))  # (d_out, B) @ (B, d_in)
    deltas.append((e_mod.T @ mods[-1] / n, e_mod.mean(0)))
    return deltas


def step_gradients(method, x, y):
    objective, _ = method.step_objective(x, y)
    params = [p for p in method.parameters() if p.requires_grad]
    return dict(zip([n for n, p in method.named_parameters() if p.requires_grad],
                    torch.autograd.grad(objective, params), strict=True))  # fmt: skip


def test_the_update_is_the_papers_on_a_plain_linear_net():
    torch.manual_seed(0)
    method = PEPITA((6,), 3, backbone=plain_linear, feedback_scale=0.5).double()
    bb = method.backbone
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    F_ = method.feedback[0]  # (C, |x|)
    layers = [(bb.embed.weight, bb.embed.bias)] + [(b.weight, b.bias) for b in bb.blocks]
    with torch.no_grad():
        want = pepita_by_hand(layers, (bb.head.weight, bb.head.bias), F_, x, y)
    got = step_gradients(method, x, y)
    names = ["embed", "blocks.0", "blocks.1", "head"]
    for name, (dw, db) in zip(names, want, strict=True):
        assert dw.abs().max() > 1e-4, name  # the update is not trivially zero
        torch.testing.assert_close(got[f"backbone.{name}.weight"], dw, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(got[f"backbone.{name}.bias"], db, rtol=1e-10, atol=1e-13)


def test_on_a_resmlp_the_last_map_of_each_block_and_the_head_follow_the_paper():
    """f_l = W2·GELU(W1·LN(h_{l-1})): W2's update is (h_l − h_l^mod)(z_l^mod)ᵀ with z_l^mod the
    modulated pass's GELU output, the embedding's (h_0 − h_0^mod) x_modᵀ, and the head's
    e^mod·LN(h_L^mod)ᵀ; with the residual add, h_l − h_l^mod is the state's difference."""
    torch.manual_seed(1)
    backbone = partial(ResMLP, d_hidden=6, num_blocks=2, w2_std=0.5)
    method = PEPITA((5,), 3, backbone=backbone, feedback_scale=0.3).double()
    bb = method.backbone
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([2, 0, 1, 2])
    with torch.no_grad():

        def run(inp):
            hs, zs = [bb.embed(inp)], []
            for block in bb.blocks:
                ln, w1, act, w2 = block.ln, block.w1, block.act, block.w2
                zs.append(act(w1(ln(hs[-1]))))
                hs.append(hs[-1] + w2(zs[-1]))
            top = bb.out_ln(hs[-1])
            e = torch.softmax(bb.head(top), 1) - F.one_hot(y, 3).double()
            return hs, zs, top, e

        hs, _, _, e = run(x)
        x_mod = x + e @ method.feedback[0]
        mods, zs_mod, top_mod, e_mod = run(x_mod)
    got = step_gradients(method, x, y)
    n = len(y)
    a0 = hs[0] - mods[0]
    torch.testing.assert_close(got["backbone.embed.1.weight"], a0.T @ x_mod / n, rtol=1e-10, atol=0)
    for l in range(2):
        a = hs[l + 1] - mods[l + 1]
        want = a.T @ zs_mod[l] / n  # (d, B) @ (B, hidden)
        torch.testing.assert_close(got[f"backbone.blocks.{l}.w2.weight"], want, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        got["backbone.head.weight"], e_mod.T @ top_mod / n, rtol=1e-10, atol=0
    )


def test_credits_are_the_difference_of_the_two_passes_and_the_forward_option_keeps_h_L():
    torch.manual_seed(2)
    method = PEPITA((6,), 3, backbone=plain_linear, update="forward").double()
    bb = method.backbone
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    trace = bb.trace(x).detached()
    e = torch.softmax(trace.logits, 1) - F.one_hot(y, 3).double()
    x_mod = x + e @ method.feedback[0]
    with torch.no_grad():
        want = [h - m for h, m in zip(trace.states, bb.trace(x_mod).states, strict=True)]
    for a, w in zip(method.credits(trace, y), want, strict=True):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-14)
    got = step_gradients(method, x, y)
    # the forward option: the head's gradient is the cross-entropy's at the first pass
    want_head = e.T @ trace.states[-1] / len(y)
    torch.testing.assert_close(got["backbone.head.weight"], want_head, rtol=1e-10, atol=0)


def test_F_is_the_codes_he_uniform_draw_times_the_scale():
    torch.manual_seed(3)
    method = PEPITA((400,), 10, backbone=partial(ResMLP, d_hidden=4, num_blocks=1))
    f = method.feedback[0]
    assert f.shape == (10, 400)
    bound = 0.05 * math.sqrt(6 / 400)  # sd = sqrt(6/nin); U(−sd, sd)·Bstd
    assert f.abs().max() <= bound
    assert f.abs().max() > 0.95 * bound  # 4000 draws reach the edge
    assert abs(f.mean()) < 0.05 * bound and abs(f.std() - bound / math.sqrt(3)) < 0.05 * bound


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="feedback_scale > 0"):
        PEPITA((6,), 3, backbone=plain_linear, feedback_scale=0.0)
    with pytest.raises(ConfigError, match="'modulated' or 'forward'"):
        PEPITA((6,), 3, backbone=plain_linear, update="backward")
