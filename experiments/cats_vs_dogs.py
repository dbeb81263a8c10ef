"""Cats vs dogs: Kaggle's photos, either 2,000 + 2,000 images with a 20% validation split,
or Chollet's 1,000 / 500 / 500 per class prepared with `python -m search.data`.

Tutorial recipe, evaluated first: the small from-scratch VGG (conv 32-64-128-128 with
max-pooling, dense 512, dropout 0.5) at 150 px, RMSprop lr 1e-4, batch 32, augmentation,
64 epochs. The bar to beat: about 80% validation accuracy; without augmentation it overfits
after a few epochs. The search may also try Inception v3, which the tutorial does not.

Budget: 24 trials of up to 64 epochs; ASHA's rungs at 4, 12 and 36 epochs keep one GPU
node busy for a few hours; on a cluster, `--trials 80`.
"""

from search.spec import Budget, Choice, Experiment, IntRange, LogUniform, Resources, Space, Uniform

experiment = Experiment(
    name="cats_vs_dogs",
    data="data/cats_vs_dogs",
    image_size_px=150,
    val_fraction=0.2,
    weights="imagenet",
    space=Space(
        arch=Choice("small_cnn", "inception_frozen", "inception_partial"),
        unfrozen_blocks=IntRange(1, 3),
        head_units=Choice(0, 128),
        cnn_width=Choice(16, 32, 64),
        cnn_depth=IntRange(3, 5),
        augment=Uniform(0.0, 1.0),
        optimizer=Choice("rmsprop", "adam", "sgd"),
        lr={"rmsprop": LogUniform(1e-5, 1e-3), "adam": LogUniform(1e-5, 1e-3), "sgd": LogUniform(1e-4, 1e-1)},
        momentum=Uniform(0.8, 0.99),
        batch_size=Choice(16, 32, 64),
        dropout=Uniform(0.0, 0.6),
    ),
    recipes=(
        {"arch": "small_cnn", "cnn_width": 32, "cnn_depth": 4, "dropout": 0.5, "optimizer": "rmsprop", "lr": 1e-4,
         "batch_size": 32, "augment": 1.0},
    ),
    objective="val_acc",
    budget=Budget(trials=24, max_epochs=64, grace_period_epochs=4, reduction_factor=3),
    resources=Resources(workers=1, cpus_per_worker=2, gpus_per_worker="auto"),
)
