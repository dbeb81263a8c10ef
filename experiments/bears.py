"""Bears: grizzly, panda, polar (338 / 328 / 253 images in the tutorial, split 80/20 into
train/ and test/).

Tutorial recipe, evaluated first: Inception v3 (ImageNet weights) frozen up to the
pre-logits layer with a new softmax layer (head_units=0), Adam (Keras's default lr 1e-3),
batch 40, 10 epochs at 299 px, random crop-zoom up to 0.2 and horizontal flips. Our one
augmentation strength cannot express crop-zoom alone: 0.3 gives flips, zoom within ±9%,
rotation within ±15° and shifts within ±6%, the nearest setting. The bar to beat: 98% test
accuracy (about 25 minutes on a Colab GPU).

Budget: 20 trials of at most 10 epochs fit one GPU node in about an hour; on a cluster,
`--trials 60`.
"""

from search.spec import Budget, Choice, Experiment, IntRange, LogUniform, Resources, Space, Uniform

experiment = Experiment(
    name="bears",
    data="data/bears",
    image_size_px=299,
    val_fraction=0.2,
    weights="imagenet",
    space=Space(
        arch=Choice("inception_frozen", "inception_partial"),
        unfrozen_blocks=IntRange(1, 3),
        head_units=Choice(0, 128),
        augment=Uniform(0.0, 0.8),
        optimizer=Choice("adam", "rmsprop", "sgd"),
        lr={"adam": LogUniform(1e-5, 3e-3), "rmsprop": LogUniform(1e-5, 1e-3), "sgd": LogUniform(1e-4, 1e-1)},
        momentum=Uniform(0.8, 0.99),
        batch_size=Choice(20, 40, 64),
        dropout=Uniform(0.0, 0.5),
    ),
    recipes=(
        {"arch": "inception_frozen", "head_units": 0, "dropout": 0.0, "optimizer": "adam", "lr": 1e-3,
         "batch_size": 40, "augment": 0.3},
    ),
    objective="val_acc",
    budget=Budget(trials=20, max_epochs=10, grace_period_epochs=2, reduction_factor=3),
    resources=Resources(workers=1, cpus_per_worker=2, gpus_per_worker="auto"),
)
