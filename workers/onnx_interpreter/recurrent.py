"""ONNX LSTM, GRU and RNN (CNN + LSTM video classifiers, LRCN-style), unrolled over time with torch ops.

Both exporters write torch's nn.LSTM / nn.GRU / nn.RNN as these ops: weights W (directions, gates*hidden,
input), R (directions, gates*hidden, hidden), biases B = [Wb, Rb], gates in ONNX's order (LSTM: input,
output, forget, cell; GRU: update, reset, hidden). Each time step is plain matrix products and activations,
so gradients reach the input. Per-sample sequence lengths shorter than the sequence are not supported.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Activation = Callable[[Tensor], Tensor]

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# name -> (how many of activation_alpha / activation_beta it takes, its defaults)
_PARAMETRISED: dict[str, tuple[int, tuple[float, float]]] = {
    "Affine": (2, (1.0, 0.0)),
    "LeakyRelu": (1, (0.01, 0.0)),
    "ThresholdedRelu": (1, (1.0, 0.0)),
    "ScaledTanh": (2, (1.0, 1.0)),
    "HardSigmoid": (2, (0.2, 0.5)),
    "Elu": (1, (1.0, 0.0)),
}


def lstm(node: Any, x: Tensor, w: Tensor, r: Tensor, *rest: Tensor | None) -> tuple[Tensor, ...]:
    return _run("LSTM", node, x, w, r, *rest)


def gru(node: Any, x: Tensor, w: Tensor, r: Tensor, *rest: Tensor | None) -> tuple[Tensor, ...]:
    return _run("GRU", node, x, w, r, *rest)


def rnn(node: Any, x: Tensor, w: Tensor, r: Tensor, *rest: Tensor | None) -> tuple[Tensor, ...]:
    return _run("RNN", node, x, w, r, *rest)


def _run(kind: str, node: Any, x: Tensor, w: Tensor, r: Tensor, *rest: Tensor | None) -> tuple[Tensor, ...]:
    padded = list(rest) + [None] * 5
    b, lengths, h0, c0, peep = padded[0], padded[1], padded[2], padded[3], padded[4]
    if int(node.attrs.get("layout", 0)):
        raise ValueError(f"{kind} with layout 1 (batch first) is not supported (nor by onnxruntime); torch exports layout 0")
    steps, batch = int(x.shape[0]), int(x.shape[1])
    if lengths is not None and lengths.numel() and bool((lengths.reshape(-1) != steps).any()):
        raise ValueError(f"{kind} with per-sample sequence_lens shorter than the sequence is not supported")
    if kind == "LSTM" and int(node.attrs.get("input_forget", 0)):
        raise ValueError("LSTM with input_forget is not supported")
    direction = str(node.attrs.get("direction", "forward"))
    directions = 2 if direction == "bidirectional" else 1
    hidden = int(node.attrs.get("hidden_size", r.shape[-1]))
    gates = _GATES[kind]
    activations = _activations(node, kind, directions)
    clip = node.attrs.get("clip")
    bound = None if clip is None else float(clip)
    ys, last_h, last_c = [], [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        w_bias, r_bias = (b[d, : gates * hidden], b[d, gates * hidden :]) if b is not None else (None, None)
        inputs = x @ w[d].t()  # every step's input projection at once: (seq, batch, gates*hidden)
        if w_bias is not None:
            inputs = inputs + w_bias
        h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
        c = c0[d] if c0 is not None else x.new_zeros(batch, hidden)
        acts = activations[d]
        outs: list[Tensor] = []
        for t in range(steps - 1, -1, -1) if reverse else range(steps):
            if kind == "LSTM":
                h, c = _lstm_step(inputs[t], h, c, r[d], r_bias, None if peep is None else peep[d], acts, hidden, bound)
            elif kind == "GRU":
                h = _gru_step(inputs[t], h, r[d], r_bias, acts, hidden, bound, bool(node.attrs.get("linear_before_reset", 0)))
            else:
                h = acts[0](_clip(inputs[t] + h @ r[d].t() + (0 if r_bias is None else r_bias), bound))
            outs.append(h)
        if reverse:
            outs.reverse()
        ys.append(torch.stack(outs) if outs else x.new_zeros(0, batch, hidden))
        last_h.append(h)
        last_c.append(c)
    y = torch.stack(ys, dim=1)  # (seq, directions, batch, hidden)
    y_h, y_c = torch.stack(last_h), torch.stack(last_c)
    return (y, y_h, y_c)[: max(1, int(node.num_outputs))]


def _lstm_step(
    projected: Tensor, h: Tensor, c: Tensor, r: Tensor, r_bias: Tensor | None, peep: Tensor | None,
    acts: list[Activation], hidden: int, bound: float | None,
) -> tuple[Tensor, Tensor]:
    z = projected + h @ r.t()
    if r_bias is not None:
        z = z + r_bias
    i, o, f, g = z.split(hidden, dim=-1)
    if peep is not None:
        p_i, p_o, p_f = peep.split(hidden)
        i, f = i + p_i * c, f + p_f * c
    gate, cell, out = acts
    i, f, g = gate(_clip(i, bound)), gate(_clip(f, bound)), cell(_clip(g, bound))
    c = f * c + i * g
    if peep is not None:
        o = o + p_o * c
    return gate(_clip(o, bound)) * out(c), c


def _gru_step(
    projected: Tensor, h: Tensor, r: Tensor, r_bias: Tensor | None, acts: list[Activation], hidden: int,
    bound: float | None, linear_before_reset: bool,
) -> Tensor:
    x_z, x_r, x_h = projected.split(hidden, dim=-1)
    r_z, r_r, r_h = r.split(hidden, dim=0)
    b_z, b_r, b_h = r_bias.split(hidden) if r_bias is not None else (0, 0, 0)
    gate, cell = acts
    update = gate(_clip(x_z + h @ r_z.t() + b_z, bound))
    reset = gate(_clip(x_r + h @ r_r.t() + b_r, bound))
    if linear_before_reset:
        candidate = cell(_clip(x_h + reset * (h @ r_h.t() + b_h), bound))
    else:
        candidate = cell(_clip(x_h + (reset * h) @ r_h.t() + b_h, bound))
    return (1 - update) * candidate + update * h


def _clip(x: Tensor, bound: float | None) -> Tensor:
    return x if bound is None else x.clamp(-bound, bound)


def _activations(node: Any, kind: str, directions: int) -> list[list[Activation]]:
    """Per direction, the activation functions (ONNX: f, g, h), consuming alpha/beta values in order."""
    per = len(_DEFAULT_ACTIVATIONS[kind])
    names = [str(n) for n in node.attrs.get("activations", [])] or _DEFAULT_ACTIVATIONS[kind] * directions
    if len(names) == per and directions == 2:
        names = names * 2
    alphas = [float(a) for a in node.attrs.get("activation_alpha", [])]
    betas = [float(b) for b in node.attrs.get("activation_beta", [])]
    made: list[Activation] = []
    for name in names:
        takes, (alpha, beta) = _PARAMETRISED.get(name, (0, (0.0, 0.0)))
        if takes >= 1 and alphas:
            alpha = alphas.pop(0)
        if takes >= 2 and betas:
            beta = betas.pop(0)
        made.append(_activation(name, alpha, beta))
    return [made[d * per : (d + 1) * per] for d in range(directions)]


def _activation(name: str, alpha: float, beta: float) -> Activation:
    simple: dict[str, Activation] = {
        "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu, "Softsign": F.softsign, "Softplus": F.softplus,
    }
    if name in simple:
        return simple[name]
    if name == "Affine":
        return lambda x: alpha * x + beta
    if name == "LeakyRelu":
        return lambda x: F.leaky_relu(x, alpha)
    if name == "ThresholdedRelu":
        return lambda x: torch.where(x > alpha, x, torch.zeros_like(x))
    if name == "ScaledTanh":
        return lambda x: alpha * torch.tanh(beta * x)
    if name == "HardSigmoid":
        return lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0)
    if name == "Elu":
        return lambda x: F.elu(x, alpha)
    raise ValueError(f"recurrent activation {name!r} is not supported")
