"""The readable DARTS architecture step the engine is checked against (a test oracle, not used by runs).

First-order and second-order (unrolled) alpha gradients and Adam on the alphas of one SuperNet,
written as the DARTS reference computes them, per weight tensor, with ``functional_call``.

Second order follows the DARTS reference: a virtual SGD step of the weights on the training batch,
w' = w - xi * (momentum * buf + grad_w L_train(w) + wd * w) (the exact next SGD step with momentum),
then dalpha = grad_alpha L_val(w', alpha) - xi * H v, where v = grad_w' L_val(w', alpha) and the
mixed Hessian-vector product H v = grad^2_{alpha,w} L_train(w, alpha) v is a central finite difference
with eps = r / ||v|| (r = 0.01). Unlike the reference, the virtual and perturbed weights are passed
functionally (``torch.func.functional_call``): no model copy, and the real weights are never
perturbed in place (in-place add/sub leaves round-off on them), with BN running statistics of those
extra passes kept off the real model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.func import functional_call

from unrealnas.nas.genotype import UNDECIDED
from unrealnas.nas.supernet import ALPHA_NAMES, CELL_TYPES, SuperNet


def _grads_or_zeros(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    # Unused inputs (alphas of a fully decided cell, weights of unused ops) have zero gradient.
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like, strict=True)]


def _autocast_off(device_type: str, off: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type, enabled=False) if off else contextlib.nullcontext()


def _base(model: SuperNet) -> SuperNet:
    # A torch.compile'd supernet forwards attribute access but prefixes its parameter names;
    # functional calls need the plain module.
    return getattr(model, "_orig_mod", model)


def first_order_alpha_grads(model: SuperNet, x_val: torch.Tensor,
                            y_val: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(validation loss, [d loss / d alpha_normal, d loss / d alpha_reduce]) at the current weights.

    ``model`` may be a ``torch.compile``'d SuperNet (its compiled forward is used).
    """
    alphas = model.arch_parameters()
    loss = model.criterion(model(x_val), y_val)
    # autograd.grad w.r.t. the alphas only: no weight-gradient kernels, no stale .grad on weights.
    grads = torch.autograd.grad(loss, alphas, allow_unused=True)
    return loss.detach(), _grads_or_zeros(grads, alphas)


def _functional_loss(model: SuperNet, params: dict[str, torch.Tensor], x: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    # Fresh copies of the buffers: the BN running statistics of these extra passes (virtual and
    # perturbed weights) must not leak into the real model. Train-mode BN uses batch statistics,
    # so the outputs are the same as with the real buffers.
    names, buffers = zip(*model.named_buffers(), strict=True)
    # one foreach op copies them all (x * 1 is an exact copy), not one clone per buffer
    tensors = dict(zip(names, torch._foreach_mul(list(buffers), 1), strict=True))
    tensors.update(params)
    return model.criterion(functional_call(model, tensors, (x,)), y)


def unrolled_alpha_grads(
    model: SuperNet,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    xi: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    momentum_buffers: Sequence[torch.Tensor | None] | None = None,
    hvp_r: float = 0.01,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(validation loss at w', second-order alpha gradients) of the one-step unrolled DARTS objective.

    ``momentum_buffers`` align with ``model.weight_parameters()`` (None entries: no buffer yet);
    ``weight_decay`` and ``momentum`` are the weight optimizer's; ``xi`` its current learning rate.
    A compiled supernet is unwrapped: the functional passes run the plain module.
    """
    model = _base(model)
    names, weights = zip(*model.named_weight_parameters(), strict=True)
    alphas = model.arch_parameters()
    if momentum_buffers is None:
        momentum_buffers = [None] * len(weights)

    # Virtual step w' = w - xi * (momentum * buf + g + wd * w), as foreach ops over all weights
    # (a per-weight loop dispatches thousands of small ops).
    loss_train = model.loss(x_train, y_train)
    g_train = _grads_or_zeros(torch.autograd.grad(loss_train, weights, allow_unused=True), weights)
    with torch.no_grad():
        d = list(torch._foreach_add(g_train, list(weights), alpha=weight_decay) if weight_decay else g_train)
        have = [i for i, buf in enumerate(momentum_buffers) if buf is not None] if momentum else []
        if have:
            moved = torch._foreach_add([d[i] for i in have], [momentum_buffers[i] for i in have], alpha=momentum)
            for i, t in zip(have, moved, strict=True):
                d[i] = t
        w_virtual = [w.requires_grad_(True) for w in torch._foreach_add(list(weights), d, alpha=-xi)]
    del g_train, d

    # dalpha and v = dL_val/dw' at (w', alpha).
    params = dict(zip(names, w_virtual, strict=True))
    params.update(zip(ALPHA_NAMES, alphas, strict=True))
    loss_val = _functional_loss(model, params, x_val, y_val)
    grads = _grads_or_zeros(torch.autograd.grad(loss_val, [*alphas, *w_virtual], allow_unused=True),
                            [*alphas, *w_virtual])
    dalpha, v = grads[: len(alphas)], grads[len(alphas):]
    del w_virtual, params

    # Central difference of grad_alpha L_train along v; R stays a tensor (no host sync).
    with torch.no_grad():
        v_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([t.float() for t in v])))
        R = hvp_r / v_norm
    hvp_sides = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            moved = torch._foreach_add(list(weights), torch._foreach_mul(v, sign * R))
            perturbed = dict(zip(names, moved, strict=True))
        perturbed.update(zip(ALPHA_NAMES, alphas, strict=True))
        loss = _functional_loss(model, perturbed, x_train, y_train)
        hvp_sides.append(_grads_or_zeros(torch.autograd.grad(loss, alphas, allow_unused=True), alphas))
    out = []
    for da, gp, gm in zip(dalpha, *hvp_sides, strict=True):
        out.append(da - xi * (gp - gm) / (2 * R))
    return loss_val.detach(), out


def _sgd_settings(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> Iterator[tuple[float, float, Any]]:
    """(momentum, weight_decay, momentum_buffer or None) per parameter, from an SGD optimizer."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for p in params:
        g = group_of.get(id(p))
        if g is None:
            raise ValueError("a supernet weight is not in the weight optimizer's param groups")
        yield g.get("momentum", 0.0), g.get("weight_decay", 0.0), optimizer.state.get(p, {}).get("momentum_buffer")


class Architect:
    """Updates the supernet's alphas with Adam on validation batches (first or second order).

    All state is the Adam optimizer's (``state_dict()`` / ``load_state_dict()``); the alphas live in
    the supernet's own state_dict. Alpha rows of SGAS-decided or pruned edges never change.
    """

    def __init__(self, model: SuperNet, lr: float = 3e-4, betas: tuple[float, float] = (0.5, 0.999),
                 weight_decay: float = 0.0, unrolled: bool = False, hvp_r: float = 0.01,
                 hypergrad_amp: bool = False) -> None:
        """``weight_decay``: 0 for unreal data (UnrealNAS), 1e-3 for real data (DARTS reference).

        ``hypergrad_amp``: run the second-order computation under the caller's autocast; by
        default it runs in fp32 (finite differences in bf16 are mostly round-off).
        """
        self.model = model
        self.unrolled = unrolled
        self.hvp_r = hvp_r
        self.hypergrad_amp = hypergrad_amp
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=betas,
                                          weight_decay=weight_decay)

    def alpha_grads(self, x_val: torch.Tensor, y_val: torch.Tensor, x_train: torch.Tensor | None = None,
                    y_train: torch.Tensor | None = None, network_optimizer: torch.optim.Optimizer | None = None,
                    xi: float | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(validation loss, alpha gradients) as the configured order computes them; no update."""
        if not self.unrolled:
            return first_order_alpha_grads(self.model, x_val, y_val)
        if x_train is None or y_train is None or network_optimizer is None:
            raise ValueError("second-order DARTS needs the training batch and the weight optimizer")
        weights = self.model.weight_parameters()
        settings = list(_sgd_settings(network_optimizer, weights))
        momenta = {s[0] for s in settings}
        decays = {s[1] for s in settings}
        if len(momenta) > 1 or len(decays) > 1:
            raise ValueError("second-order DARTS needs one momentum and one weight decay for all weights")
        if xi is None:
            xi = float(network_optimizer.param_groups[0]["lr"])
        with _autocast_off(x_val.device.type, not self.hypergrad_amp):
            return unrolled_alpha_grads(self.model, x_train, y_train, x_val, y_val, xi=xi,
                                        momentum=momenta.pop(), weight_decay=decays.pop(),
                                        momentum_buffers=[s[2] for s in settings], hvp_r=self.hvp_r)

    def step(self, x_val: torch.Tensor, y_val: torch.Tensor, x_train: torch.Tensor | None = None,
             y_train: torch.Tensor | None = None, network_optimizer: torch.optim.Optimizer | None = None,
             xi: float | None = None) -> torch.Tensor:
        """One Adam step on the alphas; returns the (detached) validation loss, without a host sync.

        Second order needs the training batch and the weight optimizer (SGD: its momentum buffers,
        momentum and weight decay define the virtual step; ``xi`` defaults to its current lr).
        """
        loss, grads = self.alpha_grads(x_val, y_val, x_train, y_train, network_optimizer, xi)
        alphas = self.model.arch_parameters()
        any_frozen = any(c != UNDECIDED for t in CELL_TYPES for c in self.model.edge_ops(t))
        masks = self.model.frozen_alpha_masks() if any_frozen else None
        for i, (a, g) in enumerate(zip(alphas, grads, strict=True)):
            a.grad = g.masked_fill(masks[i][:, None], 0.0) if masks is not None else g
        if masks is None:
            self.optimizer.step()
        else:
            # Adam's momentum and weight decay would still move a frozen row with a zero gradient:
            # put the frozen rows back (the SGAS reference froze them with requires_grad=False).
            saved = [a.detach().clone() for a in alphas]
            self.optimizer.step()
            with torch.no_grad():
                for a, s, m in zip(alphas, saved, masks, strict=True):
                    a.copy_(torch.where(m[:, None], s, a))
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The Adam optimizer state (the only state the Architect holds)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the Adam optimizer state saved by ``state_dict``."""
        self.optimizer.load_state_dict(state["optimizer"])
