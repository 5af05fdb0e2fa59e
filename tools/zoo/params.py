"""Seeded weights shared by every framework.

Each tensor is drawn from its own generator seeded by ``(seed, crc32(name))``,
so a layer gets the same numbers whatever order a framework builds layers in.
Layouts are PyTorch's; each backend converts:

* conv weight ``[out, in/groups, kh, kw]`` (Keras wants ``[kh, kw, in, out]``,
  depthwise ``[kh, kw, in, 1]``)
* linear weight ``[out, in]`` (Keras and Paddle want ``[in, out]``)
* batch norm ``gamma, beta, running_mean, running_var``

The scales keep activations O(1) through 50 layers of random weights, so
float32 differences between exporters stay meaningful: He-normal convs,
running stats close to (0, 1), and ``gamma_scale`` (< 1) on the last BN of a
residual branch.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["Params"]


class Params:
    """Deterministic weights by layer name; ``linear_std=None`` means 1/sqrt(fan_in)."""

    def __init__(self, seed: int = 0, linear_std: float | None = None):
        self.seed = seed
        self.linear_std = linear_std
        self._cache: dict[str, np.ndarray] = {}

    def _draw(self, name: str, shape, kind: str, a: float, b: float) -> np.ndarray:
        if name not in self._cache:
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            if kind == "normal":
                arr = rng.normal(a, b, size=shape)
            else:
                arr = rng.uniform(a, b, size=shape)
            self._cache[name] = arr.astype(np.float32)
        arr = self._cache[name]
        if arr.shape != tuple(shape):
            raise ValueError(f"{name}: asked for shape {tuple(shape)}, have {arr.shape}")
        return arr

    def conv(self, name, cin, cout, k, groups=1, bias=False):
        """(weight [cout, cin/groups, k, k], bias [cout] or None)."""
        fan_in = cin // groups * k * k
        w = self._draw(name + ".weight", (cout, cin // groups, k, k), "normal", 0.0, (2.0 / fan_in) ** 0.5)
        b = self._draw(name + ".bias", (cout,), "normal", 0.0, 0.02) if bias else None
        return w, b

    def bn(self, name, c, gamma_scale=1.0):
        """(gamma, beta, running_mean, running_var), each [c]."""
        gamma = self._draw(name + ".weight", (c,), "uniform", 0.9 * gamma_scale, 1.1 * gamma_scale)
        beta = self._draw(name + ".bias", (c,), "normal", 0.0, 0.05)
        mean = self._draw(name + ".running_mean", (c,), "normal", 0.0, 0.05)
        var = self._draw(name + ".running_var", (c,), "uniform", 0.8, 1.2)
        return gamma, beta, mean, var

    def linear(self, name, cin, cout, bias=True):
        """(weight [cout, cin], bias [cout] or None)."""
        std = self.linear_std if self.linear_std is not None else cin ** -0.5
        w = self._draw(name + ".weight", (cout, cin), "normal", 0.0, std)
        b = self._draw(name + ".bias", (cout,), "normal", 0.0, 0.02) if bias else None
        return w, b

    def layernorm(self, name, dim):
        """(gamma, beta), each [dim]."""
        gamma = self._draw(name + ".weight", (dim,), "uniform", 0.95, 1.05)
        beta = self._draw(name + ".bias", (dim,), "normal", 0.0, 0.02)
        return gamma, beta

    def embedding(self, name, num, dim):
        """table [num, dim]."""
        return self._draw(name + ".weight", (num, dim), "normal", 0.0, 0.02)
