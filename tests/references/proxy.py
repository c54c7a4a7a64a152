"""Proxy losses as float64 plain loops with PML's reductions: Proxy-Anchor (Kim et al.
2020, Eq. 4), Proxy-NCA (Movshovitz-Attias et al. 2017) and Normalized-Softmax (Zhai & Wu
2019). `proxies [C, D]`, one per class."""

from __future__ import annotations

import math

import numpy as np

from references.common import unit


def ref_proxy_anchor(x, y, proxies, margin=0.1, alpha=32.0):
    num_classes = len(proxies)
    pos_total, neg_total, with_pos = 0.0, 0.0, 0
    for c in range(num_classes):
        pc = unit(proxies[c])
        pos_sum, neg_sum, has_pos, has_neg = 0.0, 0.0, False, False
        for i in range(len(x)):
            cos = float(np.dot(unit(x[i]), pc))
            if y[i] == c:
                pos_sum += math.exp(-alpha * (cos - margin))
                has_pos = True
            else:
                neg_sum += math.exp(alpha * (cos + margin))
                has_neg = True
        if has_pos:
            pos_total += math.log(1.0 + pos_sum)
            with_pos += 1
        if has_neg:
            neg_total += math.log(1.0 + neg_sum)
    return pos_total / with_pos + neg_total / num_classes


def ref_proxy_nca(x, y, proxies, softmax_scale=1.0):
    losses = []
    for i in range(len(x)):
        xi = unit(x[i])
        logits = [-softmax_scale * float(np.sum((xi - unit(p)) ** 2)) for p in proxies]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        losses.append(log_z - logits[y[i]])
    return sum(losses) / len(losses)


def ref_normalized_softmax(x, y, proxies, temperature=0.05):
    losses = []
    for i in range(len(x)):
        xi = unit(x[i])
        logits = [float(np.dot(xi, unit(p))) / temperature for p in proxies]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        losses.append(log_z - logits[y[i]])
    return sum(losses) / len(losses)
