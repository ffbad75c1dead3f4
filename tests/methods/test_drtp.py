"""DRTP: credits −onehot(y)·B_l, their sign against the DRTP code's on a worked example."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from faeval.backbones import ResMLP, SmallCNN
from faeval.data import TensorBatches
from faeval.methods import DFA, DRTP
from tests.helpers import GradRecorder, quiet_trainer, reference_states, sgd


def test_credits_are_minus_the_target_row_of_each_feedback_matrix():
    torch.manual_seed(0)
    method = DRTP((3, 16, 16), 4, backbone=partial(SmallCNN, width=4, num_blocks=2))
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 3, 1, 1, 2, 0])
    trace = method.backbone.trace(x).detached()
    credits = method.credits(trace, y)
    for l, (a, h) in enumerate(zip(credits, trace.states, strict=True)):
        assert a.shape == h.shape
        for i, label in enumerate(y.tolist()):  # row y_i of B_l, negated, reshaped like h_l
            torch.testing.assert_close(a[i].flatten(), -method.feedback[l][label])


def test_sign_convention_against_the_drtp_code_on_a_worked_example():
    """C = 3, |h_l| = 4, B_l = [I | 0], label 1, prediction p = (0.5, 0.2, 0.3)."""
    method = DRTP((4,), 3, backbone=partial(ResMLP, d_hidden=4, num_blocks=1))
    dfa = DFA((4,), 3, backbone=partial(ResMLP, d_hidden=4, num_blocks=1))
    b = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    for m in (method, dfa):
        for l in range(len(m.feedback)):
            getattr(m.feedback, f"B{l}").copy_(b)
    y = torch.tensor([1])
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.3]]))
    trace = method.backbone.trace(torch.zeros(1, 4)).detached()
    trace.logits = logits
    a = method.credits(trace, y)[0]
    assert a.tolist() == [[0.0, -1.0, 0.0, 0.0]]  # −onehot(y)·B: minus row 1
    code = F.one_hot(y, 3).float() @ b  # function.py, train_mode "DRTP": labels.mm(B)
    assert code.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    torch.testing.assert_close(a, F.one_hot(y, 3).float() @ -b)  # faeval with B = code with −B
    e = dfa.credits(trace, y)[0]  # DFA: (p − onehot(y))·B = (0.5, −0.8, 0.3, 0)
    torch.testing.assert_close(e, torch.tensor([[0.5, -0.8, 0.3, 0.0]]))
    assert e[0, 1] < 0 and a[0, 1] < 0 < code[0, 1]  # DFA's sign on the target class is kept


def test_training_gives_each_module_the_vjp_of_its_credit(tmp_path):
    torch.manual_seed(0)
    method = DRTP((10,), 4, optimizer=sgd(0.0), backbone=partial(ResMLP, d_hidden=8, num_blocks=2))
    recorder = GradRecorder()
    x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
    loader = TensorBatches(x, y, batch_size=16)
    quiet_trainer(tmp_path, max_steps=1, callbacks=[recorder]).fit(
        method, train_dataloaders=loader, val_dataloaders=loader
    )
    got, bb = recorder.grads[0], method.backbone
    states, _ = reference_states(bb, x)
    target = F.one_hot(y, 4).float()
    for l, module in [(0, bb.embed), (2, bb.blocks[1])]:
        out = module(x) if l == 0 else module(states[l - 1].detach())
        credit = -target @ method.feedback[l] / len(y)  # ⟨out, a_l⟩ averaged over the batch
        want = torch.autograd.grad(out, list(module.parameters()), credit)
        for (name, _), w in zip(module.named_parameters(), want, strict=True):
            prefix = "backbone.embed." if l == 0 else "backbone.blocks.1."
            torch.testing.assert_close(got[prefix + name], w, rtol=1e-4, atol=1e-7)
