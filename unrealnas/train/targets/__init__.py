"""Training targets: what a retraining fits and how it is measured.

``base.py`` holds the types every target shares (Target, TargetSpec, Batch); ``registry.py`` builds
a target by name (``train.target``); one module per target (cifar, imagenet, imagenet_ffcv,
chexpert, stored: a generated dataset folder, digits via cifar's loader).
"""
