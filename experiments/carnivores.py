"""Carnivores: cheetah, hyena, jaguar, tiger (the tutorial had 900 train / 100 test each).

Tutorial recipe, evaluated first: Inception v3 (ImageNet weights, frozen) at 300 px, a
Dense 128 ReLU head with dropout 0.2, RMSprop lr 1e-4, batch 32, 25 epochs, full Keras
augmentation (rotation 50, zoom 0.3, shifts 0.2, shear 0.2, flip, brightness 0.8-1.2).
The bar to beat: 99.03% validation accuracy (99.51% train).

Budget: 30 trials suit one GPU node (about a night on one GPU); on a cluster raise it with
`--trials 100`; ASHA stops most trials after 3 epochs either way.
"""

from search.spec import Budget, Choice, Experiment, IntRange, LogUniform, Resources, Space, Uniform

experiment = Experiment(
    name="carnivores",
    data="data/carnivores",
    image_size_px=300,
    val_fraction=0.2,
    weights="imagenet",
    space=Space(
        arch=Choice("inception_frozen", "inception_partial", "small_cnn"),
        unfrozen_blocks=IntRange(1, 4),
        head_units=Choice(0, 128, 256),
        cnn_width=Choice(32, 64),
        cnn_depth=IntRange(4, 5),
        augment=Uniform(0.0, 1.0),
        optimizer=Choice("rmsprop", "adam", "sgd"),
        lr={"rmsprop": LogUniform(1e-5, 1e-3), "adam": LogUniform(1e-5, 1e-3), "sgd": LogUniform(1e-4, 1e-1)},
        momentum=Uniform(0.8, 0.99),
        batch_size=Choice(16, 32, 64),
        dropout=Uniform(0.0, 0.5),
    ),
    recipes=(
        {"arch": "inception_frozen", "head_units": 128, "dropout": 0.2, "optimizer": "rmsprop", "lr": 1e-4,
         "batch_size": 32, "augment": 1.0},
    ),
    objective="val_acc",
    budget=Budget(trials=30, max_epochs=25, grace_period_epochs=3, reduction_factor=3),
    resources=Resources(workers=1, cpus_per_worker=2, gpus_per_worker="auto"),
)
