"""Per-example gradients of the output function w.r.t. the trainable parameters.

Implementations
---------------
HookGradientComputer
    One ordinary batched forward and backward (the cost of a training step);
    forward hooks keep each adapted linear layer's input ``x`` and output
    ``y``, and the per-example weight gradient is the outer product
    ``sum_t dh/dy_t x_t^T`` of that example's tokens. Works when every
    differentiated parameter is the weight or bias of an ``nn.Linear`` (LoRA's
    A and B always are); the default then.
FuncGradientComputer
    ``torch.func``: ``vmap(grad(f))`` over the examples of a padded batch with
    ``functional_call``: one batched forward+backward, no Python loop. Needs
    eager attention (``ModelConfig.attn_implementation = "eager"``).
LoopGradientComputer
    One ``torch.autograd.grad`` call per example: the slow, obviously correct
    reference used by tests and benchmarks.

The batched computer scores only response positions: it hands the model
``logits_to_keep`` (the positions whose next token is a response token), so
the vocabulary projection and the output function skip the prompt. The
reference computer takes the full logits, which is how tests check both.

Both return the same contract: values ``b`` (n_examples,), gradients as a
dict name -> (n_examples, \\*param_shape), and optionally each example's mean
last-layer hidden state. Padding contributes nothing, so an example's
results do not depend on its batch mates.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from gradselect.data.tokenize import IGNORE_INDEX
from gradselect.errors import ModelError
from gradselect.features.output import OutputFunction


@dataclass
class GradientBatch:
    """Results for one batch.

    Attributes
    ----------
    values : Tensor of shape (n_examples,)
    grads : dict of str to Tensor of shape (n_examples, \\*param_shape)
    hidden : Tensor of shape (n_examples, hidden_size) or None
    factors : dict of str to (Tensor, Tensor)
        Linear weights whose per-example gradient was left unformed (hooks with
        ``factored``): ``(dy, x)`` of shapes (n_examples, n_tokens, out) and
        (n_examples, n_tokens, in), the gradient being ``sum_t dy_t x_t^T``.
    """

    values: torch.Tensor
    grads: dict[str, torch.Tensor]
    hidden: torch.Tensor | None = None
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)


def select_parameters(model, patterns: Sequence[str] | None = None) -> dict[str, torch.nn.Parameter]:
    """The parameters to differentiate: the trainable ones, or those matching ``patterns``.

    Parameters
    ----------
    patterns : sequence of str, optional
        Regular expressions searched in parameter names (e.g. ``"lora_"``,
        ``r"layers\\.2[0-9]\\."``); by default every parameter with
        ``requires_grad``.
    """
    named = dict(model.named_parameters())
    if patterns:
        compiled = [re.compile(p) for p in patterns]
        chosen = {n: p for n, p in named.items() if any(c.search(n) for c in compiled)}
        what = f"matching {list(patterns)}"
    else:
        chosen = {n: p for n, p in named.items() if p.requires_grad}
        what = "with requires_grad"
    if not chosen:
        raise ModelError(f"no parameters {what}; the model has e.g. {list(named)[:5]}")
    return chosen


class GradientComputer(abc.ABC):
    """Computes output values and per-example gradients for padded batches.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM (optionally a peft model), in eval mode.
    output_fn : OutputFunction
    param_patterns : sequence of str, optional
        See :func:`select_parameters`.
    with_hidden : bool
        Also return each example's mean last-layer hidden state over its tokens.
    """

    def __init__(self, model, output_fn: OutputFunction, param_patterns=None, *, with_hidden: bool = False):
        self.model = model
        self.output_fn = output_fn
        self.params = select_parameters(model, param_patterns)
        self.with_hidden = with_hidden

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.params.items()}

    @abc.abstractmethod
    def compute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> GradientBatch:
        """Values and gradients for a right-padded batch.

        Parameters
        ----------
        input_ids, attention_mask, labels : Tensor of shape (n_examples, seq_len)
            Labels are -100 outside the response.
        """

    def _single(self, params, input_ids, attention_mask, labels, positions=None):
        """Output value (and hidden mean) of one example.

        Inputs have shape (seq_len,). With ``positions`` (n_positions,), only
        the logits at those positions are computed and ``labels`` holds the
        token each of them predicts (-100 to skip); otherwise ``labels`` are
        the sequence's own labels.
        """
        from torch.func import functional_call

        kwargs = dict(
            input_ids=input_ids[None],
            attention_mask=attention_mask[None],
            output_hidden_states=self.with_hidden,
            use_cache=False,
        )
        if positions is not None:
            kwargs["logits_to_keep"] = positions  # 1-D: read the same by every transformers release
        out = functional_call(self.model, params, args=(), kwargs=kwargs)
        if positions is not None:
            value = self.output_fn.mean_over(out.logits[0], labels)
        else:
            value = self.output_fn(out.logits[0], labels)
        if self.with_hidden:
            h = out.hidden_states[-1][0].float()  # [seq_len, hidden]
            m = attention_mask.to(h.dtype)[:, None]
            hidden = (h * m).sum(0) / m.sum()
        else:
            hidden = value.new_zeros(())
        return value, (value.detach(), hidden.detach())


def response_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose logits predict a response token, and those tokens.

    Parameters
    ----------
    labels : Tensor of shape (n_examples, seq_len)

    Returns
    -------
    positions, gold : Tensor of shape (n_examples, n_positions)
        Padded to the longest response in the batch with position 0 and gold -100.
    """
    predicts = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    width = max(1, int(predicts.sum(1).max()))
    positions = torch.zeros(labels.shape[0], width, dtype=torch.long, device=labels.device)
    gold = torch.full_like(positions, IGNORE_INDEX)
    for i, row in enumerate(predicts):
        t = torch.nonzero(row).flatten()
        positions[i, : len(t)] = t
        gold[i, : len(t)] = labels[i, t + 1]
    return positions, gold


def accepts_logits_to_keep(model) -> bool:
    """Whether the (unwrapped) HF model's forward takes ``logits_to_keep``."""
    return "logits_to_keep" in inspect.signature(_base_model(model).forward).parameters


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


#: Model classes whose forward indexes every row with every row's 2-D ``logits_to_keep``
#: (transformers releases before per-row positions), found on the first call.
_KEEPS_EVERY_ROW: set[type] = set()


def forward_at_positions(model, positions: torch.Tensor, **kwargs):
    """The model's output with logits only at each example's own positions.

    Parameters
    ----------
    positions : Tensor of shape (n_examples, n_positions)
        From :func:`response_positions`.
    **kwargs
        The model's other inputs (``input_ids``, ``attention_mask``, ...).

    Returns
    -------
    output, logits : the model's output, and Tensor of shape (n_examples, n_positions, vocab)

    Recent transformers keep row ``i``'s positions for row ``i``; earlier 5.x releases index
    every row with the whole (n, k) tensor and return (n, n, k, vocab) logits, which would
    mix examples. That is detected on the first call (the diagonal is taken then) and such
    models are afterwards handed the sorted union of the positions, a 1-D index every release
    reads the same way, and each row's logits gathered from it.
    """
    cls = type(_base_model(model))
    if cls not in _KEEPS_EVERY_ROW:
        out = model(**kwargs, logits_to_keep=positions)
        if out.logits.ndim == positions.ndim + 1:
            return out, out.logits
        _KEEPS_EVERY_ROW.add(cls)
        rows = torch.arange(positions.shape[0], device=positions.device)
        return out, out.logits[rows, rows]
    union = positions.unique()  # sorted
    out = model(**kwargs, logits_to_keep=union)
    index = torch.searchsorted(union, positions)
    return out, torch.take_along_dim(out.logits, index[..., None], dim=1)


class FuncGradientComputer(GradientComputer):
    """``vmap(grad(...))`` over the batch: one batched forward+backward."""

    def compute(self, input_ids, attention_mask, labels):
        from torch.func import grad, vmap

        params = {n: p.detach() for n, p in self.params.items()}
        if accepts_logits_to_keep(self.model):
            positions, gold = response_positions(labels)
            args, dims = (input_ids, attention_mask, gold, positions), (None, 0, 0, 0, 0)
        else:
            args, dims = (input_ids, attention_mask, labels), (None, 0, 0, 0)
        per_example = vmap(grad(self._single, has_aux=True), in_dims=dims)
        try:
            # torch.func.grad differentiates inside no_grad; no_grad keeps autograd from also
            # recording a graph for the parameters outside ``params``.
            with torch.no_grad():
                grads, (values, hidden) = per_example(params, *args)
        except RuntimeError as err:
            if "vmap" in str(err) or "functorch" in str(err):
                raise ModelError(
                    f"per-example gradients with torch.func failed ({err}); load the model with "
                    "attn_implementation = 'eager' ([model] section), or use gradients = 'loop'"
                ) from None
            raise
        return GradientBatch(values, dict(grads), hidden if self.with_hidden else None)


class LoopGradientComputer(GradientComputer):
    """Reference: one autograd call per example (slow, obviously correct)."""

    def compute(self, input_ids, attention_mask, labels):
        names = list(self.params)
        tensors = [self.params[n] for n in names]
        flags = [t.requires_grad for t in tensors]
        for t in tensors:
            t.requires_grad_(True)
        values, hidden, grads = [], [], {n: [] for n in names}
        try:
            for i in range(input_ids.shape[0]):
                n_tok = int(attention_mask[i].sum())  # drop padding entirely
                value, (_, h) = self._single(
                    dict(zip(names, tensors)), input_ids[i, :n_tok], attention_mask[i, :n_tok], labels[i, :n_tok]
                )
                for n, g in zip(names, torch.autograd.grad(value, tensors)):
                    grads[n].append(g)
                values.append(value.detach())
                hidden.append(h)
        finally:
            for t, f in zip(tensors, flags):
                t.requires_grad_(f)
        return GradientBatch(
            torch.stack(values),
            {n: torch.stack(g) for n, g in grads.items()},
            torch.stack(hidden) if self.with_hidden else None,
        )


class HookGradientComputer(GradientComputer):
    """Batched forward+backward; per-example gradients of linear layers as outer products.

    With ``factored = True`` the weights' outer products are not formed: the batch carries
    each weight's ``(dy, x)`` in ``factors`` (for :class:`~gradselect.features.projector.KroneckerProjector`).
    """

    def __init__(self, model, output_fn, param_patterns=None, *, with_hidden=False, factored: bool = False):
        super().__init__(model, output_fn, param_patterns, with_hidden=with_hidden)
        self.factored = factored
        modules = dict(model.named_modules())
        self._owners: dict[str, tuple[str, str]] = {}
        for name in self.params:
            owner, _, attr = name.rpartition(".")
            if not isinstance(modules.get(owner), torch.nn.Linear) or attr not in ("weight", "bias"):
                raise ModelError(f"parameter {name!r} is not a linear layer's weight or bias; use gradients = 'func'")
            self._owners[name] = (owner, attr)
        self._modules = {owner: modules[owner] for owner, _ in self._owners.values()}

    @staticmethod
    def supports(model, param_patterns=None) -> bool:
        modules = dict(model.named_modules())
        for name in select_parameters(model, param_patterns):
            owner, _, attr = name.rpartition(".")
            if not isinstance(modules.get(owner), torch.nn.Linear) or attr not in ("weight", "bias"):
                return False
        return True

    def compute(self, input_ids, attention_mask, labels):
        captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def keep(name):
            def hook(module, inputs, output):
                captured[name] = (inputs[0].detach(), output)

            return hook

        handles = [m.register_forward_hook(keep(n)) for n, m in self._modules.items()]
        # Gradients must flow to the layer outputs, whatever requires_grad says.
        flags = {n: p.requires_grad for n, p in self.params.items()}
        for p in self.params.values():
            p.requires_grad_(True)
        try:
            kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                          output_hidden_states=self.with_hidden)
            if accepts_logits_to_keep(self.model):
                positions, gold = response_positions(labels)
                out, logits = forward_at_positions(self.model, positions, **kwargs)
                values = self.output_fn.mean_over(logits, gold)  # [n_examples]
            else:
                out = self.model(**kwargs)
                values = self.output_fn(out.logits, labels)  # [n_examples]
            names = list(captured)
            outputs = [captured[n][1] for n in names]
            # Each example's value depends only on its own row: one backward of the sum
            # gives every example's output gradient in its own row.
            grad_outputs = torch.autograd.grad(values.sum(), outputs)
        finally:
            for h in handles:
                h.remove()
            for n, p in self.params.items():
                p.requires_grad_(flags[n])
        dy = {n: g for n, g in zip(names, grad_outputs)}
        grads, factors = {}, {}
        for pname, (owner, attr) in self._owners.items():
            x, _ = captured[owner]
            if attr == "weight" and self.factored:
                factors[pname] = (dy[owner], x.to(dy[owner].dtype))
            elif attr == "weight":  # [n_examples, out, in] = sum over tokens of dy_t x_t^T
                grads[pname] = torch.einsum("bto,bti->boi", dy[owner], x.to(dy[owner].dtype))
            else:
                grads[pname] = dy[owner].sum(1)
        hidden = None
        if self.with_hidden:
            h = out.hidden_states[-1].detach().float()  # [n_examples, seq_len, hidden]
            m = attention_mask.to(h.dtype)[..., None]
            hidden = (h * m).sum(1) / m.sum(1)
        return GradientBatch(values.detach(), grads, hidden, factors)


GRADIENT_COMPUTERS: dict[str, type[GradientComputer]] = {
    "hooks": HookGradientComputer,
    "func": FuncGradientComputer,
    "loop": LoopGradientComputer,
}


def make_gradient_computer(kind: str, model, output_fn, param_patterns=None, *, with_hidden=False) -> GradientComputer:
    """Build a gradient computer by name; ``auto`` is hooks where they apply, else func."""
    if kind == "auto":
        kind = "hooks" if HookGradientComputer.supports(model, param_patterns) else "func"
    return GRADIENT_COMPUTERS[kind](model, output_fn, param_patterns, with_hidden=with_hidden)
