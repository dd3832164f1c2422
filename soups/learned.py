"""Learned soups (paper, Sec. 3 and App. I): mixing weights α = softmax(a) and an inverse temperature β,
fit on the held-out split by minibatch gradient descent (AdamW, lr 0.05, 5 epochs, as the official
by-layer script).

- `learned`: one α vector over the N ingredients, shared by every tensor.
- `learned_by_layer`: one α vector per parameter tensor.

Memory. The official script kept every ingredient on the GPU inside autograd's graph (a 490 GB RAM
node for 72 ViT-B/32). Here ingredients stay on the CPU, and a custom autograd function builds each
combined tensor W = Σ_i α_i W_i on the device one ingredient at a time; its backward streams the
ingredients again for ∂L/∂α_i = ⟨∂L/∂W, W_i⟩. Autograd saves nothing per ingredient, so the device
holds one combined model, and the host the N ingredients once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class _MixTensors(torch.autograd.Function):
    """W = Σ_i α_i W_i with the W_i on the host; backward gives ∂L/∂α_i = ⟨∂L/∂W, W_i⟩."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:  # type: ignore[override]
        out = torch.zeros(tensors[0].shape, dtype=torch.float32, device=device)
        for weight, tensor in zip(alpha.tolist(), tensors):  # in-place adds: no per-ingredient temporaries
            out.add_(tensor.to(device, torch.float32, non_blocking=True), alpha=weight)
        ctx.tensors, ctx.device = tensors, device
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        flat = grad_out.reshape(-1)
        grads = [torch.dot(flat, tensor.to(ctx.device, torch.float32, non_blocking=True).reshape(-1)) for tensor in ctx.tensors]
        return torch.stack(grads), None, None


def mix(alpha: torch.Tensor, tensors: Sequence[torch.Tensor], device: torch.device | str) -> torch.Tensor:
    return _MixTensors.apply(alpha, tensors, torch.device(device))


class LearnedSoup(nn.Module):
    """α (softmax over raw weights, one row per tensor or one shared row) and β over host-held ingredients."""

    def __init__(
        self,
        ingredients: Sequence[Mapping[str, torch.Tensor]],
        by_layer: bool,
        device: torch.device | str = "cpu",
        buffers: Collection[str] = (),
    ):
        """`buffers`: keys of float buffers (e.g. BatchNorm running stats). They are mixed with the same α,
        but no gradient flows into them: the loss does not depend on them differentiably in eval mode."""
        super().__init__()
        self.buffers = set(buffers)
        self.device = torch.device(device)
        first = ingredients[0]
        self.keys = list(first)
        self.float_keys = [k for k in self.keys if first[k].is_floating_point()]
        self.stacks = {k: [state[k] for state in ingredients] for k in self.float_keys}
        # Non-float tensors are equal across ingredients (checked by the caller) and not mixed.
        self.fixed = {k: first[k].to(self.device) for k in self.keys if k not in self.stacks}
        self.by_layer = by_layer
        rows = len(self.float_keys) if by_layer else 1
        n = len(ingredients)
        # As the official script: raw weights softmax(ones) = 1/N, so α starts uniform; β starts at 1.
        self.alpha_raw = nn.Parameter(torch.full((rows, n), 1.0 / n, device=self.device))
        self.beta = nn.Parameter(torch.tensor(1.0, device=self.device))

    def alpha(self) -> torch.Tensor:
        return torch.softmax(self.alpha_raw, dim=1)

    def combined(self) -> dict[str, torch.Tensor]:
        """The soup's state dict on the device (differentiable in α)."""
        alpha = self.alpha()
        weights = {}
        for i, key in enumerate(self.float_keys):
            row = alpha[i if self.by_layer else 0]
            weights[key] = mix(row.detach() if key in self.buffers else row, self.stacks[key], self.device)
        weights.update(self.fixed)
        return weights

    def alpha_by_key(self) -> dict[str, list[float]]:
        alpha = self.alpha().detach().cpu()
        return {k: alpha[i if self.by_layer else 0].tolist() for i, k in enumerate(self.float_keys)}

    def ingredient_weights(self) -> list[float]:
        """Per ingredient, its α averaged over tensors (the one α row for a global learned soup)."""
        return self.alpha().detach().mean(dim=0).cpu().tolist()


@dataclasses.dataclass
class LearnedHistory:
    losses: list[float]  # mean training loss per epoch
    beta: float


def fit_learned_soup(
    soup: LearnedSoup,
    model: nn.Module,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    epochs: int = 5,
    lr: float = 0.05,
    weight_decay: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
) -> LearnedHistory:
    """Minimise the cross-entropy of β·f(x; Σ α_i θ_i) on `batches(epoch)`; `model` supplies the architecture."""
    model.eval().to(soup.device)
    optimizer = torch.optim.AdamW(soup.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    step = 0
    for epoch in range(epochs):
        total, count = 0.0, 0
        for images, labels in batches(epoch):
            images, labels = images.to(soup.device), labels.to(soup.device)
            logits = functional_call(model, soup.combined(), (images,))
            loss = F.cross_entropy(soup.beta * logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count, step = total + loss.item() * len(labels), count + len(labels), step + 1
            if on_step is not None:
                on_step(step, loss.item())
        losses.append(total / max(count, 1))
    return LearnedHistory(losses, float(soup.beta.detach()))


def learned_state(soup: LearnedSoup) -> dict[str, torch.Tensor]:
    """The learned soup's weights as a plain CPU state dict in the ingredients' dtypes."""
    with torch.no_grad():
        combined = soup.combined()
    first = {k: stack[0] for k, stack in soup.stacks.items()}
    return {k: v.detach().to("cpu", first[k].dtype if k in first else v.dtype) for k, v in combined.items()}
