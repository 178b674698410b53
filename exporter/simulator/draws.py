"""Deterministic draws: every simulated task is a pure function of ``(seed, inputs, time)``.

A decision is keyed by a hash of what it is about (seed, account, slot, task id, attempt...), never by a
shared RNG's position, so adding a task or asking in another order changes nothing else.
"""

from __future__ import annotations

import hashlib
import math
import random


def hash_int(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def hash_uniform(*parts: object) -> float:
    """A deterministic number in [0, 1) for a decision keyed by ``parts``."""
    return hash_int(*parts) / 2**64


def poisson(rng: random.Random, mean: float) -> int:
    """Inverse-CDF Poisson draw; a normal approximation where exp(-mean) would underflow."""
    if mean <= 0:
        return 0
    if mean > 500:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    u = rng.random()
    k, p = 0, math.exp(-mean)
    cdf = p
    while u > cdf and (p > 1e-300 or k < mean):
        k += 1
        p *= mean / k
        cdf += p
    return k


def mix64(x: int) -> int:
    """splitmix64's finaliser: more independent bits from one task's draw (slow and late shares)."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)
