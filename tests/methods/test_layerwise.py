"""The layer-wise feedback mechanism against autograd (B = W) and hand-written VJPs (random B)."""

from __future__ import annotations

import contextlib
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faeval.backbones import ResMLP
from faeval.data import TensorBatches
from faeval.errors import ConfigError
from faeval.methods import BRSF, FRSF, KP, USF, LayerFA
from faeval.methods.layerwise import feedback_attached, feedback_layers
from tests.helpers import GradRecorder, LinearNet, quiet_trainer, sgd
from tests.methods.test_contract import BACKBONES, NUM_CLASSES, batch


def set_feedback(method: LayerFA, tensors: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for k, t in enumerate(tensors):
            getattr(method.feedback, f"B{k}").copy_(t)


def plain_gradients(backbone, x, y):
    """Autograd's backprop through the plain network: every parameter and every state."""
    h = backbone.embed(x)
    states = [h]
    for block in backbone.blocks:
        h = h + block(h) if backbone.residual_add else block(h)
        states.append(h)
    for s in states:
        s.retain_grad()
    F.cross_entropy(backbone.readout(h), y, reduction="sum").backward()
    grads = {n: p.grad.clone() for n, p in backbone.named_parameters()}
    backbone.zero_grad(set_to_none=True)
    return grads, [s.grad for s in states]


@pytest.mark.parametrize("name", BACKBONES)
def test_feedback_equal_to_the_weights_gives_autograds_backprop_exactly(name):
    torch.manual_seed(0)
    input_shape, factory = BACKBONES[name]
    method = LayerFA(input_shape, NUM_CLASSES, backbone=factory).double().train()
    set_feedback(method, [w.detach() for w in method.weights()])
    x, y = batch(input_shape, n=12)
    x = x.double()
    want, want_states = plain_gradients(method.backbone, x, y)

    with method.attached():
        logits = method.backbone(x)
        F.cross_entropy(logits, y, reduction="sum").backward()
    got = {n: p.grad for n, p in method.backbone.named_parameters()}
    assert got.keys() == want.keys()
    for n in want:
        scale = want[n].abs().max().item()
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-13 * scale, msg=n)

    credits = method.credits(method.backbone.trace(x).detached(), y)
    for layer, (a, g) in enumerate(zip(credits, want_states, strict=True)):
        scale = g.abs().max().item()
        torch.testing.assert_close(a, g, rtol=1e-10, atol=1e-13 * scale, msg=f"layer {layer}")


def test_random_feedback_weight_gradients_equal_a_hand_written_vjp_with_b(tmp_path):
    """ResMLP backward written out: linear layers send δ·B down, LN and GELU their exact VJP."""
    torch.manual_seed(0)
    method = LayerFA(
        (10,),
        4,
        optimizer=sgd(0.0),
        feedback_seed=3,
        backbone=partial(ResMLP, d_hidden=8, num_blocks=3, w2_std=0.5),
    )
    recorder = GradRecorder()
    x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
    loader = TensorBatches(x, y, batch_size=len(x))
    quiet_trainer(tmp_path, max_steps=1, callbacks=[recorder]).fit(
        method, train_dataloaders=loader, val_dataloaders=loader
    )
    got = recorder.grads[0]
    bb = method.backbone
    B = {name: method.feedback[k] for k, (name, _) in enumerate(feedback_layers(bb))}

    def vjp(fn, inp, cotangent):
        return torch.func.vjp(fn, inp)[1](cotangent)[0]

    want = {}
    with torch.no_grad():
        h = x @ bb.embed[1].weight.T + bb.embed[1].bias
        cache = []
        for block in bb.blocks:
            u = block.ln(h)
            z = u @ block.w1.weight.T + block.w1.bias
            act = F.gelu(z)
            cache.append((h, u, z, act))
            h = h + act @ block.w2.weight.T + block.w2.bias
        v = bb.out_ln(h)
        logits = v @ bb.head.weight.T + bb.head.bias
        d = (torch.softmax(logits, 1) - F.one_hot(y, 4)) / len(y)  # ∂ℓ̄/∂logits
        want["head"] = d.T @ v
        dh = vjp(bb.out_ln, h, d @ B["head"])  # the head sends d·B, not d·W
        for l in reversed(range(3)):
            block, (h_in, u, z, act) = bb.blocks[l], cache[l]
            want[f"blocks.{l}.w2"] = dh.T @ act
            dz = vjp(F.gelu, z, dh @ B[f"blocks.{l}.w2"])
            want[f"blocks.{l}.w1"] = dz.T @ u
            dh = dh + vjp(block.ln, h_in, dz @ B[f"blocks.{l}.w1"])  # identity path + branch
        want["embed.1"] = dh.T @ x
    for name, w in want.items():
        torch.testing.assert_close(got[f"backbone.{name}.weight"], w, rtol=1e-4, atol=1e-7)
    # and the result is not backprop's: the test could not pass with W in place of B
    plain, _ = plain_gradients(bb, x, y)
    assert not torch.allclose(got["backbone.embed.1.weight"], plain["embed.1.weight"] / len(y))


def test_a_convolution_sends_the_error_through_b_by_the_transposed_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1).double()
    feedback = torch.randn_like(conv.weight)
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    with feedback_attached([conv], [feedback]):
        y = conv(x)
    torch.testing.assert_close(y, F.conv2d(x, conv.weight, conv.bias, 2, 1))
    cotangent = torch.randn_like(y)
    y.backward(cotangent)
    want_x = F.conv_transpose2d(cotangent, feedback, stride=2, padding=1, output_padding=0)
    torch.testing.assert_close(x.grad, want_x)
    w = conv.weight.detach().requires_grad_(True)
    (want_w,) = torch.autograd.grad(F.conv2d(x.detach(), w, conv.bias, 2, 1), w, cotangent)
    torch.testing.assert_close(conv.weight.grad, want_w)
    torch.testing.assert_close(conv.bias.grad, cotangent.sum((0, 2, 3)))


def test_a_linear_layer_on_tokens_sends_the_error_through_b():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4).double()
    feedback = torch.randn_like(linear.weight)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)  # (B, T, d)
    with feedback_attached([linear], [feedback]):
        y = linear(x)
    cotangent = torch.randn_like(y)
    y.backward(cotangent)
    torch.testing.assert_close(x.grad, cotangent @ feedback)  # (B, T, 4) @ (4, 6)
    torch.testing.assert_close(linear.weight.grad, torch.einsum("bto,bti->oi", cotangent, x))
    torch.testing.assert_close(linear.bias.grad, cotangent.sum((0, 1)))


def test_the_plain_backward_is_back_after_the_block_even_on_error():
    torch.manual_seed(0)
    net = LinearNet()
    layers = [m for _, m in feedback_layers(net)]
    with pytest.raises(RuntimeError, match="inside"):
        with feedback_attached(layers, [torch.zeros_like(m.weight) for m in layers]):
            raise RuntimeError("inside")
    assert all("forward" not in vars(m) for m in layers)
    x = torch.randn(3, 6, requires_grad=True)
    net(x).sum().backward()
    assert x.grad.abs().sum() > 0  # zero feedback would have given exactly 0


def test_mismatched_feedback_and_unsupported_layers_are_refused():
    linear = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="W's shape"):
        with feedback_attached([linear], [torch.zeros(3, 2)]):
            pass

    class Conv1dNet(LinearNet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.extra = nn.Conv1d(1, 1, 3)

    with pytest.raises(ConfigError, match=r"Conv1dNet\.extra is a Conv1d; pick another"):
        LayerFA((6,), 3, backbone=Conv1dNet)


def test_every_linear_and_conv_layer_of_embed_blocks_and_readout_takes_feedback():
    method = LayerFA((12,), 4, backbone=partial(ResMLP, d_hidden=16, num_blocks=2))
    names = [n for n, _ in method.layers()]
    assert names == ["embed.1", "blocks.0.w1", "blocks.0.w2", "blocks.1.w1", "blocks.1.w2", "head"]
    assert [tuple(b.shape) for b in method.feedback_weights()] == method.weight_shapes()


@pytest.mark.parametrize("cls", [LayerFA, USF, BRSF, FRSF, KP], ids=lambda c: c.__name__)
def test_a_checkpoint_holds_the_feedback_so_a_reload_gives_the_same_credits(tmp_path, cls):
    backbone = partial(ResMLP, d_hidden=16, num_blocks=2)
    seeds = [{}, {}] if cls is USF else [{"feedback_seed": 1}, {"feedback_seed": 2}]  # no draw
    torch.manual_seed(0)
    method = cls((12,), 4, backbone=backbone, **seeds[0])
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    loader = TensorBatches(x, y, batch_size=16)
    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(method, train_dataloaders=loader, val_dataloaders=loader)
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    torch.manual_seed(1)  # other weights, other feedback: everything must come from the file
    reloaded = cls((12,), 4, backbone=backbone, **seeds[1])
    ckpt = torch.load(tmp_path / "run.ckpt", weights_only=False)  # partials in the hparams
    reloaded.load_state_dict(ckpt["state_dict"], strict=True)
    trace = method.backbone.trace(x).detached()
    for a, b in zip(method.credits(trace, y), reloaded.credits(trace, y), strict=True):
        assert torch.equal(a, b)
    for p, q in zip(method.feedback_weights(), reloaded.feedback_weights(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["ResMLP", "SmallCNN-downsample"])
def test_under_bf16_autocast_equal_feedback_still_gives_autocasts_backprop(name):
    """The backward computes in the error's dtype, as autocast's own backward does."""
    torch.manual_seed(0)
    input_shape, factory = BACKBONES[name]
    method = LayerFA(input_shape, NUM_CLASSES, backbone=factory)
    set_feedback(method, [w.detach() for w in method.weights()])
    x, y = batch(input_shape, n=8)
    grads = []
    for context in (contextlib.nullcontext, method.attached):
        with context(), torch.autocast("cpu", dtype=torch.bfloat16):
            F.cross_entropy(method.backbone(x), y).backward()
        grads.append({n: p.grad for n, p in method.backbone.named_parameters()})
        method.backbone.zero_grad(set_to_none=True)
    plain, attached = grads
    for n, g in plain.items():
        assert attached[n].dtype == torch.float32
        torch.testing.assert_close(attached[n], g, rtol=0, atol=0, msg=n)
