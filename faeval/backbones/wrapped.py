"""Wrapped: a network of your own in the layered interface, so every method can train it."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones.base import LayeredBackbone


class Wrapped(LayeredBackbone):
    """An existing model given as its embedding, its blocks and its readout.

    h_0 = embed(x); h_l = h_{l-1} + block_l(h_{l-1}) (or h_l = block_l(h_{l-1}) with
    ``residual_add=False``); logits = readout(h_L). The modules are used as they are, not
    copied: training the method trains your model in place, and its checkpoints hold them
    under ``backbone.embed``, ``backbone.blocks.<l>`` and ``backbone.head``.

    Which form to give the blocks in:

    - blocks that compute only the residual branch F_l (a pre-LN transformer's or a
      ResMLP's branch): ``residual_add=True``, the default. This keeps the residual stream
      visible to the methods (FA's credit follows the identity path exactly).
    - blocks that add their own skip connection inside ``forward`` (a torchvision
      ``BasicBlock``, a timm ``Block``): ``residual_add=False``; each block is then the
      whole map h_{l-1} ↦ h_l.

    The hidden states may have any shape (tokens, feature maps): diagnostics and feedback
    matrices flatten them per sample. Every method and diagnostic only uses ``embed``,
    ``blocks`` and ``readout``, so anything your model does outside them (a pooling, a final
    norm) must be inside one of the three.

    From the command line, subclass it with a constructor of the form
    ``(input_shape, num_classes, **your_options)`` that builds your model and passes its
    parts here; ``--model.backbone mypkg.MyNet --model.backbone.width 64`` then builds it.

    Args:
        embed: x ↦ h_0.
        blocks: the blocks, in order (a list or an ``nn.ModuleList``).
        readout: h_L ↦ logits (terminal normalisation, pooling, head); a list of modules is
            run in order.
        input_shape: the per-sample input shape (the methods size their feedback matrices
            and helper nets by a dry run on it).
        num_classes: C; by default read off the readout's output in that dry run.
        residual_add: h_l = h_{l-1} + block_l(h_{l-1}) when on, h_l = block_l(h_{l-1}) when off.

    Raises:
        ValueError: no blocks, a part that is not an ``nn.Module``, or a dry run on
            ``input_shape`` that does not give (1, num_classes) logits.
    """

    def __init__(
        self,
        embed: nn.Module,
        blocks: Iterable[nn.Module],
        readout: nn.Module | Iterable[nn.Module],
        input_shape: tuple[int, ...],
        num_classes: int | None = None,
        residual_add: bool = True,
    ) -> None:
        blocks = list(blocks)
        if not isinstance(readout, nn.Module):
            readout = nn.Sequential(*readout)
        parts = {"embed": embed, "readout": readout}
        parts.update({f"block {i}": b for i, b in enumerate(blocks)})
        bad = [name for name, part in parts.items() if not isinstance(part, nn.Module)]
        if bad or not blocks:
            raise ValueError(
                "Wrapped needs an embedding, at least one block and a readout, each an "
                f"nn.Module; got {len(blocks)} blocks"
                + (f", not modules: {', '.join(bad)}" if bad else "")
            )
        super().__init__(tuple(input_shape), num_classes or 0)
        self.residual_add = residual_add
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.head = readout
        found = self._dry_run_classes()
        if num_classes is not None and found != num_classes:
            raise ValueError(
                f"the wrapped readout gives {found} logits for inputs {self.input_shape}, but "
                f"num_classes={num_classes}; pass the readout that ends in the class scores"
            )
        self.num_classes = found

    @override
    def readout(self, h: Tensor) -> Tensor:
        return self.head(h)

    @torch.no_grad()
    def _dry_run_classes(self) -> int:
        """The number of logits a sample of ``input_shape`` gives (eval mode, no gradient).

        Raises:
            ValueError: the model fails on that shape or gives no (1, C) logits.
        """
        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters(), None)
            x = torch.zeros(
                (1, *self.input_shape),
                dtype=p.dtype if p is not None else None,
                device=p.device if p is not None else None,
            )
            logits = self.trace(x).logits
        except RuntimeError as err:
            raise ValueError(
                f"the wrapped model fails on an input of shape (1, *{self.input_shape}): "
                f"{str(err).splitlines()[0]}; pass the input_shape your model takes"
            ) from None
        finally:
            self.train(was_training)
        if logits.dim() != 2 or logits.shape[0] != 1:
            raise ValueError(
                f"the wrapped readout gives an output of shape {tuple(logits.shape)} for one "
                "sample; it must give logits of shape (batch, num_classes)"
            )
        return int(logits.shape[1])
