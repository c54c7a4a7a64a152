"""DeepFashion In-Shop (category -> item -> variation -> image; train / query+gallery).

    himl-train --config=configs/inshop.py --config.data.manual_dir=path/to/inshop
    himl-train --config=configs/inshop.py --config.data.manual_dir=... --config.data.data_dir=DIR
    himl-train --config=configs/inshop.py:himulcone --config.data.manual_dir=... \\
        --config.model.pretrained=FILE                     # the official HiMulConE recipe

Targets the DeepFashion In-Shop results of HiMulConE (Zhang et al., "Use All The Labels",
CVPR 2022), whose backbone is an ImageNet-pretrained ResNet-50: comparable only with
--config.model.pretrained=IMAGENET_RESNET50 (see configs/benchmark.py); without it the
backbone trains from scratch.

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"tiny" (`--config=configs/inshop.py:tiny`): a seconds-long check of the files.
"himulcone": the official code's settings (`HIMULCONE_OFFICIAL`, below).
"himulcone_unseen": the same on seen categories only, evaluated on unseen ones (below).

Split protocol (`--config.data.split_protocol`, `himl.data.readers_hier.read_inshop`):
"official" (default): list_eval_partition.txt as published (train; query -> gallery).
"held_out_categories": every 4th garment category in name order is unseen (with the 17
categories: Dresses, Leggings, Shorts, Sweatshirts_Hoodies), as HiMulConE's seen / unseen
experiment, whose own category lists are not published. train / val / query / gallery /
test keep the seen categories; unseen_train, unseen_query, unseen_gallery and unseen
(= query + gallery) hold the unseen ones, e.g.
    --config.eval.query_gallery="('unseen_query', 'unseen_gallery')"
"""

import ml_collections

from himl.configs.benchmark import apply_arg, get_benchmark_config

# salesforce/hierarchicalContrastiveLearning: the README's training command (lr 0.5,
# temp 0.1, --cosine) and train_deepfashion.py's defaults (batch 512, 100 epochs, SGD momentum
# 0.9, weight decay 1e-4, loss hmce with layer_penalty=exp, 10 linear warm-up epochs as
# batch >= 256, lr_decay_rate 0.1). An epoch of its HierarchicalBatchSampler visits every
# training image about once: 25,882 In-Shop train images / 512 = 50 steps.
HIMULCONE_OFFICIAL = dict(
    batch_size=512,
    epochs=100,
    warm_epochs=10,
    steps_per_epoch=50,
    learning_rate=0.5,
    weight_decay=1e-4,
    temperature=0.1,
)
# Official train transform (load_deep_fashion_hierarchical): RandomResizedCrop(224,
# scale=(0.8, 1)), flip, ColorJitter(0.4, 0.4, 0.4) with p=0.8 (himl: always, strength 0.4);
# evaluation: Resize(224) + CenterCrop(224), i.e. no extra crop (In-Shop images are square).
HIMULCONE_AUGMENTATION = dict(
    image_size=224, crop_scale=(0.8, 1.0), color_jitter=0.4, eval_crop=1.0, num_views=2
)


# Official --feature-extract (its default: the README command does not pass the flag): only
# layer3, layer4 and the head train. In himl's ResNet-50, conv1/bn1 are stem_conv/stem_bn and
# layer1, layer2 are stage0_block{0-2}, stage1_block{0-3}: learning-rate multiplier 0. Their
# batch-norm statistics still update, as in torch's train mode.
HIMULCONE_FROZEN = (
    "model_stem_conv",
    "model_stem_bn",
    *(f"model_stage0_block{i}" for i in range(3)),
    *(f"model_stage1_block{i}" for i in range(4)),
)


def get_config(arg: str = ""):
    config = get_benchmark_config(
        "inshop", sampler="hierarchical", eval_splits=(), ks=(1, 10, 20, 30)
    )
    config.eval.query_gallery = ("query", "gallery")  # the In-Shop protocol
    config.data.label_layout = "official"  # [category, item, variation, image]
    config.data.split_protocol = "official"  # | "held_out_categories" (see the docstring)
    if arg == "himulcone":
        return himulcone_official(config)
    if arg == "himulcone_unseen":
        return himulcone_unseen(himulcone_official(config))
    return apply_arg(config, arg)


def himulcone_unseen(config):
    """HiMulConE's seen -> unseen transfer: train on the seen categories of the
    "held_out_categories" protocol, evaluate retrieval on the unseen ones."""
    config.data.split_protocol = "held_out_categories"
    config.eval.query_gallery = ("unseen_query", "unseen_gallery")
    return config


def himulcone_official(config):
    """The official HiMulConE recipe on In-Shop (see `HIMULCONE_OFFICIAL`)."""
    o = HIMULCONE_OFFICIAL
    config.loss.name = "himulcone"
    config.loss.himulcone.temperature = o["temperature"]
    config.loss.himulcone.mode = "reference"  # the official code's numbers
    config.loss.himulcone.level_penalty = "exp"
    config.data.sampler = "hierarchical"  # a partner at every level, as HierarchicalBatchSampler
    config.data.batch_size = o["batch_size"]
    config.data.update(HIMULCONE_AUGMENTATION)
    config.optimizer.name = "sgd"  # torch SGD, momentum 0.9
    config.optimizer.learning_rate = o["learning_rate"]
    config.optimizer.weight_decay = o["weight_decay"]
    frozen = {group: 0.0 for group in HIMULCONE_FROZEN}
    config.optimizer.lr_multipliers = ml_collections.ConfigDict({"model": 1.0, **frozen})
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = o["warm_epochs"] * o["steps_per_epoch"]
    config.train.steps = o["epochs"] * o["steps_per_epoch"]
    config.train.checkpoint_every = 10 * o["steps_per_epoch"]
    return config
