"""Pure-functional metric-learning losses: `fn(embeddings, labels, **hparams) -> scalar`.

Losses with learnable parameters take them as keyword arguments (`proxies=`, from
`init_proxy_anchor` and co.); HIST, which also has batch statistics, takes the variables
from `init_hist` and returns `(loss, batch_stats)`. Pick one by name with `get_loss(name)`
or `loss_info(name)` (which creates and applies any loss's variables the same way);
`LOSSES` lists them all. The masked reductions they share are in `himl.losses.reductions`.
"""

from himl.losses.hierarchical import hicone, himulcon, himulcone
from himl.losses.hist import HistOutputs, hist, hist_outputs, init_hist
from himl.losses.pair import contrastive, multi_similarity, triplet_margin
from himl.losses.proxy import (
    init_normalized_softmax,
    init_proxy_anchor,
    init_proxy_nca,
    normalized_softmax,
    proxy_anchor,
    proxy_nca,
)
from himl.losses.registry import LOSSES, LossInfo, default_hparams, get_loss, loss_info
from himl.losses.supcon import masked_supcon, ntxent, supcon
from himl.losses.tuple import lifted_structure, npairs

__all__ = [
    "LOSSES",
    "HistOutputs",
    "LossInfo",
    "contrastive",
    "default_hparams",
    "get_loss",
    "hicone",
    "himulcon",
    "himulcone",
    "hist",
    "hist_outputs",
    "init_hist",
    "init_normalized_softmax",
    "init_proxy_anchor",
    "init_proxy_nca",
    "lifted_structure",
    "loss_info",
    "masked_supcon",
    "multi_similarity",
    "normalized_softmax",
    "npairs",
    "ntxent",
    "proxy_anchor",
    "proxy_nca",
    "supcon",
    "triplet_margin",
]
