"""Target propagation (TP, DTP, DRL, LDRL): targets, credits and feedback losses against
computations by hand, the closed forms of exact feedback, the feedback nets' training and
their place in checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones import LayeredBackbone, ResMLP, SmallCNN
from faeval.cli import run
from faeval.errors import ConfigError
from faeval.methods import DRL, DTP, LDRL, TP, TargetPropagation
from faeval.methods.target_prop import NOISE_DRAWS
from faeval.seeding import mixed_seed
from tests.helpers import TINY_RUN

RULES = [TP, DTP, DRL, LDRL]
D, C, N = 5, 3, 6


class LinearResNet(LayeredBackbone):
    """h_0 = x·Eᵀ, h_l = h_{l-1} + h_{l-1}·M_lᵀ + b_l, logits = h_L·Hᵀ: invertible linear blocks."""

    def __init__(self, input_shape=(D,), num_classes=C, num_blocks=2, seed=0):
        super().__init__(input_shape, num_classes)
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Linear(D, D)
        self.blocks = nn.ModuleList(nn.Linear(D, D) for _ in range(num_blocks))
        self.head = nn.Linear(D, num_classes)
        self.residual_add = True
        with torch.no_grad():
            for name, p in self.named_parameters():  # blocks well conditioned: cond(I + M) < 3
                scale = 0.15 if name.startswith("blocks.") else 0.5
                p.copy_(scale * torch.randn(p.shape, generator=gen))

    @override
    def readout(self, h: Tensor) -> Tensor:
        return self.head(h)


def linear_feedback(weight: Tensor, bias: Tensor | None = None) -> nn.Linear:
    """G(y) = y·Wᵀ (+ bias): a linear feedback net with the given matrix."""
    g = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).double()
    with torch.no_grad():
        g.weight.copy_(weight)
        if bias is not None:
            g.bias.copy_(bias)
    return g


def inverse(block: nn.Linear) -> nn.Linear:
    """The exact inverse of h ↦ h + h·Mᵀ + b: y ↦ (y − b)·(I + Mᵀ)⁻¹."""
    eye = torch.eye(D, dtype=torch.float64)
    inv = torch.linalg.inv(eye + block.weight.detach().T)  # (I + Mᵀ)⁻¹
    return linear_feedback(inv.T, -block.bias.detach() @ inv)


def transpose(block: nn.Linear) -> nn.Linear:
    """G with J_G = J_Φᵀ = I + Mᵀ (bias free): L-DRL's optimum."""
    return linear_feedback(torch.eye(D, dtype=torch.float64) + block.weight.detach().T)


def linear_method(cls, eta=0.3, **kwargs) -> TargetPropagation:
    return cls(backbone=LinearResNet(), eta=eta, **kwargs).double()


def data(n=N, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=gen, dtype=torch.float64), torch.randint(
        C, (n,), generator=gen
    )


def per_sample_gradients(backbone: LayeredBackbone, x: Tensor, y: Tensor) -> list[Tensor]:
    """∂ℓ_i/∂h_l by autograd on the network run by hand (Σ_i ℓ_i: one row per sample)."""
    h = backbone.embed(x)
    states = [h]
    for block in backbone.blocks:
        h = backbone.combine(h, block(h))
        states.append(h)
    for s in states:
        s.retain_grad()
    F.cross_entropy(backbone.readout(h), y, reduction="sum").backward()
    return [s.grad for s in states]


def chain_jacobians(backbone: LayeredBackbone, states: list[Tensor], layer: int) -> Tensor:
    """J_l = ∂h_L/∂h_l per sample, (N, |h_L|, |h_l|), by torch.func."""

    def up(h: Tensor) -> Tensor:
        for block in backbone.blocks[layer:]:
            h = backbone.combine(h, block(h))
        return h

    return torch.func.vmap(torch.func.jacrev(up))(states[layer])


def gauss_newton(backbone, x, y) -> list[Tensor]:
    """(J_lᵀJ_l)⁻¹·g_l at every layer: the credit DTP's exact inverses give as η → 0."""
    g = per_sample_gradients(backbone, x, y)
    states = backbone.trace(x).detached().states
    out = []
    for layer in range(len(states)):
        jac = chain_jacobians(backbone, states, layer)
        out.append(torch.linalg.solve(jac.mT @ jac, g[layer].unsqueeze(-1)).squeeze(-1))
    return out


# -- the rules by hand -------------------------------------------------------------------


def randomised(method: TargetPropagation) -> TargetPropagation:
    """Every feedback parameter redrawn (the zero last layers too): G_l far from identity."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in method.feedback.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return method


def tiny(cls, **kwargs) -> TargetPropagation:
    backbone = ResMLP((D,), C, d_hidden=4, num_blocks=3, w2_std=0.3)
    return randomised(cls(backbone=backbone, feedback_width=7, **kwargs).double())


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.__name__)
def test_targets_and_credits_follow_the_rule_by_hand(cls):
    eta = 0.05
    method = tiny(cls, eta=eta)
    x, y = data()
    trace = method.backbone.trace(x).detached()
    h = trace.states
    top = h[-1].clone().requires_grad_(True)
    F.cross_entropy(method.backbone.readout(top), y, reduction="sum").backward()
    want = [h[-1] - eta * top.grad]  # ĥ_L = h_L − η·∂ℓ_i/∂h_L
    with torch.no_grad():
        for layer in range(len(h) - 1, 0, -1):
            g = method.feedback[layer - 1]
            if cls is TP:
                want.append(g(want[-1]))
            else:
                want.append(h[layer - 1] + g(want[-1]) - g(h[layer]))
    want = want[::-1]
    got = method.targets(trace, y)
    credits = method.credits(trace, y)
    for layer, (t, w, a, s) in enumerate(zip(got, want, credits, h, strict=True)):
        torch.testing.assert_close(t, w, rtol=1e-10, atol=1e-12, msg=f"target {layer}")
        torch.testing.assert_close(a, (s - w) / eta, rtol=1e-8, atol=1e-10, msg=f"credit {layer}")
    torch.testing.assert_close(credits[-1], top.grad)  # a_L is exact


def loss_by_hand(method, layer: int, h: list[Tensor], xi: Tensor, xi2: Tensor) -> Tensor:
    """G_l's loss per sample as each paper writes it, for the noise draws ξ (at h_{l-1}) and
    ξ' (at h_l, L-DRL's second draw), σ the method's noise scale."""
    sigma = method.noise
    g = method.feedback[layer - 1]
    block = method.backbone.blocks[layer - 1]
    phi = lambda v, b=block: v + b(v)  # noqa: E731  (Φ_l with the residual add)
    corrupted = h[layer - 1] + sigma * xi
    if type(method) in (TP, DTP):  # Lee et al.: ‖G(Φ(h̃)) − h̃‖²
        return (g(phi(corrupted).detach()) - corrupted).pow(2).sum(1)
    if type(method) is DRL:  # Meulemans et al.: up to the top, DTP's path down, then G_l
        up = corrupted
        for b in method.backbone.blocks[layer - 1 :]:
            up = up + b(up)
        r = up.detach()
        with torch.no_grad():
            for k in range(len(h) - 1, layer, -1):
                gk = method.feedback[k - 1]
                r = h[k - 1] + gk(r) - gk(h[k])
        return (g(r) - g(h[layer]) - sigma * xi).pow(2).sum(1)
    # scalingDTP's get_feedback_loss
    r = g(h[layer])
    dr = g(phi(corrupted).detach()) - r
    dr_y = g(h[layer] + sigma * xi2) - r
    return -2 * (sigma * xi * dr).sum(1) + dr_y.pow(2).sum(1)


def test_feedback_losses_follow_their_papers_by_hand():
    x, _ = data()
    layer = 2
    for cls in RULES:
        method = tiny(cls, noise=0.2)
        h = method.backbone.trace(x).detached().states
        xi, xi2 = torch.randn_like(h[layer - 1]), torch.randn_like(h[layer])
        want = loss_by_hand(method, layer, h, xi, xi2)
        noise = [xi, xi2] if cls is LDRL else [xi]
        got = method.feedback_loss(layer, h, noise)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=cls.__name__)
        # Its gradient reaches G_l alone: not the other feedback nets, not the backbone (a
        # difference loss leaves G_l's output bias alone: it cancels).
        got.sum().backward()
        reached = {n for n, p in method.named_parameters() if p.grad is not None and p.grad.any()}
        own = {n for n, _ in method.named_parameters() if n.startswith(f"feedback.{layer - 1}.")}
        assert reached <= own and len(reached) >= len(own) - 1, (cls.__name__, reached)


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.__name__)
def test_the_step_gives_the_feedback_nets_the_gradient_of_their_losses_by_hand(cls):
    """The training step's objective gives each G_l the gradient of Σ_l mean_i mean_s of its
    loss by hand, on the noise of step t drawn from (feedback_seed, t, rank): layer by layer from
    l = 1, ``noise_samples`` draws each (L-DRL: ξ at h_{l-1}, then ξ' at h_l). The feedback
    nets are a parameter group of their own at ``feedback_lr``."""
    method = tiny(cls, noise=0.2, noise_samples=2, feedback_lr=0.05, feedback_seed=11)
    method.updates = 5
    x, y = data()
    objective, _ = method.step_objective(x, y)
    objective.backward()
    got = [p.grad.clone() for p in method.feedback.parameters()]

    gen = torch.Generator().manual_seed(mixed_seed(11, NOISE_DRAWS, 5, 0))  # t = 5, rank 0
    h = method.backbone.trace(x).detached().states
    total = 0
    for layer in range(1, len(h)):
        per_draw = []
        for _ in range(2):
            xi = torch.randn(h[layer - 1].shape, generator=gen, dtype=torch.float64)
            xi2 = (
                torch.randn(h[layer].shape, generator=gen, dtype=torch.float64)
                if cls is LDRL
                else None
            )
            per_draw.append(loss_by_hand(method, layer, h, xi, xi2))
        total = total + torch.stack(per_draw).mean(0).mean()
    want = torch.autograd.grad(total, list(method.feedback.parameters()), allow_unused=True)
    for i, (a, w) in enumerate(zip(got, want, strict=True)):
        w = torch.zeros_like(a) if w is None else w
        torch.testing.assert_close(a, w, rtol=1e-9, atol=1e-12, msg=f"{cls.__name__} param {i}")
    assert any(g.abs().max() > 0 for g in got)

    groups = method.parameter_groups()
    assert [g.get("lr") for g in groups] == [None, 0.05]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in method.feedback.parameters()}
    assert not {id(p) for p in groups[0]["params"]} & {id(p) for p in method.feedback.parameters()}


# -- closed forms --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TP, DTP])
def test_exact_inverses_give_the_gauss_newton_credit_as_eta_goes_to_zero(cls):
    """With G_l = Φ_l⁻¹, a_l → J_l⁻¹·∂ℓ_i/∂h_L = (J_lᵀJ_l)⁻¹·g_l, J_l = ∂h_L/∂h_l (Meulemans
    et al. 2020): nonlinear blocks, inverses by fixed-point iteration."""

    class FixedPointInverse(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, v):  # solves h + F(h) = v: h ← v − F(h), a contraction here
            h = v
            for _ in range(200):
                h = v - self.block(h)
            return h

    backbone = ResMLP((D,), C, d_hidden=4, num_blocks=3, w2_std=0.1).double()
    x, y = data()
    want = gauss_newton(backbone, x, y)
    method = cls(backbone=backbone, eta=1e-6).double()
    method.feedback = nn.ModuleList(FixedPointInverse(b) for b in backbone.blocks)
    trace = backbone.trace(x).detached()
    for v, g in zip(trace.states[1:], method.feedback, strict=True):
        residual = (g(v) + g.block(g(v)) - v).abs().max()
        assert residual < 1e-13  # the inverse is exact
    got = method.credits(trace, y)
    cos_bp = []
    for layer, (a, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-6, msg=f"layer {layer}")
        cos_bp.append(F.cosine_similarity(a, per_sample_gradients(backbone, x, y)[layer]))
    assert torch.cat(cos_bp).min() < 0.9999  # it is not backprop's direction


def test_linear_blocks_exact_feedback_closed_forms_at_any_eta():
    """Linear blocks: DTP with inverses gives (J_lᵀJ_l)⁻¹·g_l and with transposes g_l exactly,
    whatever η; a constant added to G_L moves TP's credit by −c/η and leaves DTP's alone."""
    x, y = data()
    for eta in (1.0, 0.01):
        method = linear_method(DTP, eta=eta)
        backbone = method.backbone
        trace = backbone.trace(x).detached()
        method.feedback = nn.ModuleList(inverse(b) for b in backbone.blocks)
        for a, w in zip(method.credits(trace, y), gauss_newton(backbone, x, y), strict=True):
            torch.testing.assert_close(a, w, rtol=1e-9, atol=1e-12)
        method.feedback = nn.ModuleList(transpose(b) for b in backbone.blocks)
        g = per_sample_gradients(backbone, x, y)
        for a, w in zip(method.credits(trace, y), g, strict=True):
            torch.testing.assert_close(a, w, rtol=1e-9, atol=1e-12)

    c = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4], dtype=torch.float64)
    for cls in (TP, DTP):
        method = linear_method(cls, eta=0.1)
        backbone = method.backbone
        trace = backbone.trace(x).detached()
        method.feedback = nn.ModuleList(inverse(b) for b in backbone.blocks)
        exact = method.credits(trace, y)
        with torch.no_grad():
            method.feedback[-1].bias += c
        shifted = method.credits(trace, y)
        moved = shifted[-2] - exact[-2]
        torch.testing.assert_close(moved, (-c / 0.1 if cls is TP else 0 * c).expand_as(moved))


def identity_noise(sigma: float) -> Tensor:
    """σ·(the identity's rows): averaging a quadratic form over them gives σ²·its trace."""
    return sigma * torch.eye(D, dtype=torch.float64)


def test_feedback_losses_vanish_or_are_stationary_at_their_closed_form_optimum():
    """DTP's and DRL's losses are zero at the exact inverse; L-DRL's, averaged over noise in
    the identity's rows (its exact expectation), is stationary at the transpose."""
    x, _ = data(n=D)
    noise = [torch.eye(D, dtype=torch.float64)] * 2
    for cls, exact in ((DTP, inverse), (DRL, inverse), (LDRL, transpose)):
        method = linear_method(cls, noise=0.3)
        blocks = method.backbone.blocks
        method.feedback = nn.ModuleList(exact(b) for b in blocks)
        states = method.backbone.trace(x).detached().states
        for layer in (1, 2):
            loss = method.feedback_loss(layer, states, noise).mean()
            if cls is LDRL:  # σ²·(‖J_G‖² − 2·tr(J_G·J_Φ)) / D: gradient 2σ²(J_G − J_Φᵀ) / D = 0
                (grad,) = torch.autograd.grad(loss, method.feedback[layer - 1].weight)
                assert grad.abs().max() < 1e-12
                jac = torch.eye(D, dtype=torch.float64) + blocks[layer - 1].weight.detach()
                g = method.feedback[layer - 1].weight.detach()
                want = 0.09 * ((g * g).sum() - 2 * torch.trace(g @ jac)) / D
                torch.testing.assert_close(loss.detach(), want)
            else:
                assert loss.abs() < 1e-20


@pytest.mark.parametrize(
    ("cls", "optimum", "lr", "factor"),
    [(DTP, inverse, 0.01, 0.02), (DRL, inverse, 0.01, 0.02), (LDRL, transpose, 0.003, 0.2)],
    ids=["DTP", "DRL", "LDRL"],
)
def test_online_feedback_training_reaches_the_closed_form_optimum(cls, optimum, lr, factor):
    """From the identity, the method's own feedback loss and optimizer move linear G_l
    to Φ_l⁻¹ (DTP, DRL: the loss is zero there, whatever the noise) or to J_Φᵀ (LDRL: the
    optimum of the expected loss, reached up to the noise of the draws)."""
    method = linear_method(cls, noise=0.3, feedback_lr=lr, noise_samples=4)
    blocks = method.backbone.blocks
    bias = None if cls is LDRL else torch.zeros(D)
    eye = torch.eye(D, dtype=torch.float64)
    method.feedback = nn.ModuleList(linear_feedback(eye, bias) for _ in blocks)
    opt = method.configure_optimizers()  # the run's optimizer: G_l at feedback_lr
    x, y = data(n=64)
    trace = method.backbone.trace(x).detached()
    targets = [optimum(b) for b in blocks]

    @torch.no_grad()
    def distance() -> float:
        return max(
            float((g.weight - t.weight).norm() / t.weight.norm())
            for g, t in zip(method.feedback, targets, strict=True)
        )

    start = distance()
    for _ in range(300):  # the step's feedback part (the blocks stay put): fresh noise each
        opt.zero_grad(set_to_none=True)
        method.auxiliary_loss(trace, y).backward()
        opt.step()
        method.updates += 1
    assert distance() < factor * start, (start, distance())


# -- state, options, checkpoints -----------------------------------------------------------


def test_feedback_nets_invert_a_residual_block_as_identity_plus_a_net():
    """On a residual backbone G_l(h) = h + N_l(h) (N_l learns minus the branch); without the
    residual add, or where the sizes differ, G_l = N_l, from |h_l| to |h_{l-1}| values."""
    residual = DTP(backbone=ResMLP((D,), C, d_hidden=4, num_blocks=2))
    h = torch.randn(N, 4)
    for g in residual.feedback:
        torch.testing.assert_close(g(h), h + g.net(h))
    plain = DTP(backbone=ResMLP((D,), C, d_hidden=4, num_blocks=2, residual_add=False))
    cnn = DTP(backbone=SmallCNN((3, 16, 16), C, width=4, num_blocks=2))
    assert not any(g.skip for g in [*plain.feedback, *cnn.feedback])
    sizes = [math.prod(s) for s in cnn.backbone.state_shapes()]
    for layer, g in enumerate(cnn.feedback, start=1):
        assert g.net(torch.randn(2, sizes[layer])).shape == (2, sizes[layer - 1])


def test_feedback_nets_are_seeded_and_refuse_bad_options():
    def build(**kwargs):
        return DTP(backbone=ResMLP((D,), C, d_hidden=4, num_blocks=2), **kwargs)

    a, b, c = build(feedback_seed=3), build(feedback_seed=3), build(feedback_seed=4)
    state = {k: v for k, v in a.state_dict().items() if k.startswith("feedback.")}
    assert state and all(torch.equal(v, b.state_dict()[k]) for k, v in state.items())
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in state.items())
    for bad in ({"eta": 0.0}, {"noise": -1.0}, {"noise_samples": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build(**bad)


def fit(root: Path, model: str, epochs: int, *args: str):
    return run(["fit", "--model", model, *TINY_RUN, "--trainer.max_epochs", str(epochs),
                "--model.noise_samples", "2", "--trainer.default_root_dir", str(root),
                *args])  # fmt: skip


@pytest.mark.parametrize("model", ["DTP", "LDRL"])
def test_feedback_nets_and_their_noise_are_checkpointed_and_a_run_resumes_exactly(tmp_path, model):
    straight = fit(tmp_path / "straight", model, 2)
    first = fit(tmp_path / "resumed", model, 1)
    ckpt_path = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert any(k.startswith("feedback.") for k in ckpt["state_dict"])
    # Adam's moments of the feedback nets: the second parameter group of the one optimizer
    (optimizer,) = ckpt["optimizer_states"]
    feedback_ids = optimizer["param_groups"][1]["params"]
    assert feedback_ids and all(i in optimizer["state"] for i in feedback_ids)
    resumed = fit(tmp_path / "resumed", model, 2, "--ckpt_path", str(ckpt_path))
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        if isinstance(want[k], Tensor):
            assert torch.equal(got[k], want[k]), k
        else:
            assert got[k] == want[k], k
    assert resumed.model.updates == straight.model.updates == 8  # 4 batches an epoch
    # The feedback nets trained (they are not frozen state) and an audit rebuilds them.
    feedback = [k for k in want if k.startswith("feedback.")]
    assert any(not torch.equal(first.model.state_dict()[k], want[k]) for k in feedback)
    loaded = type(straight.model).load_from_checkpoint(
        Path(straight.trainer.log_dir) / "checkpoints" / "last.ckpt"
    )
    for k, v in straight.model.state_dict().items():
        if k.startswith("feedback."):
            assert torch.equal(loaded.state_dict()[k], v), k
