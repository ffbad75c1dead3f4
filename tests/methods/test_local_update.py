"""FA and DFA: the gradient each parameter receives is the VJP of its own module with a_l.

The reference recomputes the forward pass, the output error and the credits from the
feedback matrices by the formulas of docs/methods.md, independently of the methods' code.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from faeval.backbones import ResMLP
from faeval.data import SyntheticLadder
from faeval.methods import DFA, FA
from tests.helpers import GradRecorder, LinearNet, quiet_trainer, reference_states, sgd


def _dfa_credits(method, states, e):
    return [e @ method.feedback[l] for l in range(len(states))]  # (B, C) @ (C, d)


def _fa_credits(method, states, e):
    a = e @ method.feedback[0]
    credits = [a]
    for l in range(len(states) - 1, 0, -1):
        back = a @ method.feedback[l]
        a = a + back if method.backbone.residual_add else back
        credits.insert(0, a)
    return credits


#: Training precision -> (rtol, atol) of the match: float64 leaves room for no float32 step.
PRECISIONS = {"32-true": (1e-4, 1e-7), "64-true": (1e-10, 1e-14)}


@pytest.mark.parametrize(("cls", "credit_rule"), [(DFA, _dfa_credits), (FA, _fa_credits)])
@pytest.mark.parametrize("penalty", [0.0, 0.3])
@pytest.mark.parametrize("residual_add", [True, False])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_parameter_gets_the_vjp_of_its_module_with_its_credit(
    tmp_path, cls, credit_rule, penalty, residual_add, precision
):
    """In float32 and in float64 (Lightning's 64-true moves the model with ``.double()``: the
    feedback matrices follow it and the whole step runs in float64)."""
    rtol, atol = PRECISIONS[precision]
    dm = SyntheticLadder(
        input_dim=10, num_classes=4, n_train=64, n_test=32, batch_size=16, probe_size=16, seed=3
    )
    method = cls(
        (10,),
        4,
        optimizer=sgd(0.0),
        penalty=penalty,
        feedback_seed=7,
        backbone=partial(ResMLP, d_hidden=8, num_blocks=3, w2_std=0.5, residual_add=residual_add),
    )
    recorder = GradRecorder()
    trainer = quiet_trainer(
        tmp_path, max_steps=1, limit_val_batches=0, callbacks=[recorder], precision=precision
    )
    trainer.fit(method, datamodule=dm)
    got = recorder.grads[0]
    dtype = torch.float64 if precision == "64-true" else torch.float32
    assert {t.dtype for t in [*got.values(), *method.feedback.buffers()]} == {dtype}

    loader = dm.train_dataloader()
    loader.epoch = lambda: 0
    x, y = next(iter(loader))  # the batch the step saw
    x = x.to(dtype)
    bb = method.backbone
    states, logits = reference_states(bb, x)
    states, logits = [h.detach() for h in states], logits.detach()
    e = torch.softmax(logits, 1) - F.one_hot(y, 4)
    credits = credit_rule(method, states, e)
    n = len(y)

    def check(module, output, grad_output):
        params = list(module.parameters())
        want = torch.autograd.grad(output, params, grad_output)
        names = {id(p): name for name, p in method.named_parameters()}
        for p, w in zip(params, want, strict=True):
            torch.testing.assert_close(got[names[id(p)]], w, rtol=rtol, atol=atol)

    check(bb.embed, bb.embed(x), credits[0] / n)
    for l, block in enumerate(bb.blocks, start=1):
        f = block(states[l - 1])
        check(block, f, credits[l] / n + 2 * penalty * f.detach() / n)
    readout_params = [*bb.out_ln.parameters(), *bb.head.parameters()]
    want = torch.autograd.grad(F.cross_entropy(bb.readout(states[-1]), y), readout_params)
    for p, w in zip(readout_params, want, strict=True):
        name = next(k for k, v in method.named_parameters() if v is p)
        torch.testing.assert_close(got[name], w, rtol=rtol, atol=atol)
    assert len(got) == len(list(method.parameters()))  # nothing else received a gradient


def test_fa_with_true_forward_maps_as_feedback_gives_bp_gradients():
    """Linear residual network, no LN: a_L = e·W_h, a_{l-1} = a_l (I + W_l) is exact."""
    torch.manual_seed(0)
    method = FA((6,), 3, backbone=partial(LinearNet, d=5, num_blocks=3))
    bb = method.backbone
    with torch.no_grad():
        method.feedback.B0.copy_(bb.head.weight)  # (C, d): e·W_h = ∂ℓ/∂h_L
        for l, block in enumerate(bb.blocks, start=1):
            getattr(method.feedback, f"B{l}").copy_(block.weight)  # (d_out, d_in)
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    states, logits = reference_states(bb, x)
    F.cross_entropy(logits, y, reduction="sum").backward()
    credits = method.credits(bb.trace(x).detached(), y)
    for a, h in zip(credits, states, strict=True):
        torch.testing.assert_close(a, h.grad, rtol=1e-5, atol=1e-6)


def test_fa_with_random_feedback_does_not_give_bp_gradients():
    """The converse: the previous test could not pass by accident."""
    torch.manual_seed(0)
    method = FA((6,), 3, backbone=partial(LinearNet, d=5, num_blocks=3))
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    states, logits = reference_states(method.backbone, x)
    F.cross_entropy(logits, y, reduction="sum").backward()
    credits = method.credits(method.backbone.trace(x).detached(), y)
    assert not torch.allclose(credits[0], states[0].grad, atol=1e-3)
