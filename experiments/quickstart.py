"""Quickstart: a real search on a laptop's CPU, on a data set the project generates itself.

Four coat patterns echoing the carnivores tutorial (blotches, rosettes, spots, stripes),
generated into data/coats on first use. Inception v3 starts from random weights here
(weights="none"), because this machine cannot download ImageNet weights; point an
experiment at your own photos with `--data` and use weights="imagenet" where you can.
"""

from search.spec import Budget, Choice, Experiment, IntRange, LogUniform, Resources, Space, Uniform

experiment = Experiment(
    name="quickstart",
    data="data/coats",
    generate="coats",
    image_size_px=80,
    val_fraction=0.2,
    weights="none",
    space=Space(
        arch=Choice("small_cnn", "inception_frozen", "inception_partial"),
        unfrozen_blocks=IntRange(1, 3),
        cnn_width=Choice(16, 32),
        cnn_depth=IntRange(2, 4),
        augment=Uniform(0.0, 0.5),
        optimizer=Choice("rmsprop", "adam", "sgd"),
        lr={"rmsprop": LogUniform(1e-4, 1e-2), "adam": LogUniform(1e-4, 1e-2), "sgd": LogUniform(1e-3, 1e-1)},
        momentum=Uniform(0.5, 0.95),
        batch_size=Choice(16, 32),
        dropout=Uniform(0.0, 0.5),
    ),
    # Evaluated first: the cats-vs-dogs tutorial's recipe, then the carnivores tutorial's.
    recipes=(
        {"arch": "small_cnn", "cnn_width": 32, "cnn_depth": 4, "optimizer": "rmsprop", "lr": 1e-3,
         "augment": 0.5, "batch_size": 32, "dropout": 0.5},
        {"arch": "inception_frozen", "optimizer": "rmsprop", "lr": 1e-4, "augment": 0.5,
         "batch_size": 32, "dropout": 0.2},
    ),
    objective="val_acc",
    budget=Budget(trials=12, max_epochs=8, grace_period_epochs=1, reduction_factor=2),
    concurrency=None,
    resources=Resources(workers=1, cpus_per_worker=1, gpus_per_worker="auto"),
    seed=0,
)
