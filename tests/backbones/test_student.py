"""StudentNet: the ladder's student, able to represent its teacher exactly."""

from __future__ import annotations

import pytest
import torch

from faeval.backbones import StudentNet
from faeval.data import SyntheticLadder


@pytest.mark.parametrize("depth", [2, 4])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_the_teacher_is_one_of_the_students(alpha, depth):
    ladder = SyntheticLadder(
        input_dim=6,
        num_classes=3,
        alpha=alpha,
        depth=depth,
        width=8,
        n_train=8,
        n_test=8,
        probe_size=8,
        teacher_seed=5,
    )
    student = StudentNet((6,), 3, width=8, depth=depth, alpha=alpha)
    assert student.num_blocks == depth - 1
    weights = ladder.teacher.weights  # W_1 (8×6), …, W_depth (3×8)
    with torch.no_grad():
        student.embed[1].weight.copy_(weights[0])
        for block, w in zip(student.blocks[:-1], weights[1:-1], strict=True):
            block.linear.weight.copy_(w)
        last = torch.zeros(8, 8)
        last[:3] = weights[-1]  # the last block computes W_depth·φ_α(h) in its first 3 rows
        student.blocks[-1].linear.weight.copy_(last)
        student.head.weight.copy_(torch.eye(3, 8))  # the head reads those rows out
        for p in (
            student.embed[1].bias,
            *(b.linear.bias for b in student.blocks),
            student.head.bias,
        ):
            p.zero_()
    x = torch.randn(20, 6)
    torch.testing.assert_close(student(x), ladder.teacher.scores(x))


def test_alpha_zero_student_is_affine_and_alpha_one_is_not():
    x, z = torch.randn(2, 10, 5, dtype=torch.float64)
    for alpha, affine in ((0.0, True), (1.0, False)):
        net = StudentNet((5,), 3, width=16, depth=3, alpha=alpha).double()
        for p in net.parameters():  # biases start at zero: make them count
            torch.nn.init.normal_(p, std=0.7)
        mix = net(0.3 * x + 0.7 * z)
        assert torch.allclose(mix, 0.3 * net(x) + 0.7 * net(z), atol=1e-10) is affine


def test_depth_one_has_no_block_and_is_refused():
    with pytest.raises(ValueError, match="depth 2 or more"):
        StudentNet((5,), 3, depth=1)
    with pytest.raises(ValueError, match="alpha must lie in"):
        StudentNet((5,), 3, alpha=1.5)
