"""Your own hierarchical dataset: a manifest, an image-folder tree or an .npz, no code.

    himl-train --config=configs/custom.py --config.data.custom.source=products.csv
    himl-train --config=configs/custom.py:seen_unseen --config.data.custom.source=photos/
    himl-train --config=configs/custom.py:small --config.data.custom.source=arrays.npz

Sources and split protocols are described in `himl/data/custom.py`. The args (comma
separated) choose:

- "dml" (default) or "seen_unseen": the split protocol when the source has no split column
  ("dml": classes divided into train / test; "seen_unseen": unseen classes under seen
  groups, evaluated on "unseen" and "seen_test");
- "small": a small CNN on 32 x 32 images (CPU-sized) instead of ResNet-50 at 224 x 224.

ResNet-50 starts from ImageNet weights only when you pass a weight file
(`--config.model.pretrained=resnet50.safetensors`); from scratch it needs far more data.
With a split column, evaluate the splits it has (`--config.eval.splits=test` or
`--config.eval.query_gallery=query,gallery --config.eval.splits=`).
"""

import ml_collections

from himl.configs import default
from himl.data.defaults import custom_data_config

ARGS = ("dml", "seen_unseen", "small")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    words = [w for w in arg.split(",") if w]
    unknown = [w for w in words if w not in ARGS]
    if unknown or ("dml" in words and "seen_unseen" in words):
        raise ValueError(
            f"configs/custom.py: unknown arg {arg!r}; accepts a comma-separated subset of "
            f"{', '.join(ARGS)} (dml and seen_unseen exclusive)"
        )
    protocol = "seen_unseen" if "seen_unseen" in words else "dml"
    config = default.get_config()
    config.data.name = "custom"
    config.data.custom = custom_data_config(protocol)
    config.data.augmentation = "auto"  # pad+crop for .npz arrays, DML crops for image files
    config.data.val_fraction = 0.0
    config.data.num_workers = 4
    config.data.batch_size = 64
    config.data.sampler = "m_per_class"
    config.data.samples_per_class = 4
    config.eval.splits = ("unseen", "seen_test") if protocol == "seen_unseen" else ("test",)
    config.eval.batch_size = 128
    if "small" in words:
        config.data.image_size = 32
        config.data.eval_crop = 1.0
        config.data.num_workers = 0
        config.data.samples_per_class = 8
    else:
        config.model.name = "resnet50"
        config.model.embedding_dim = 512
        config.train.steps = 5000
        config.train.log_every = 100
        config.train.checkpoint_every = 1000
        config.optimizer.learning_rate = 1e-4
        config.optimizer.warmup_steps = 200
    return config
