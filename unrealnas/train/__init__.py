"""Retraining: the one training loop, checkpoints and targets (CIFAR, ImageNet, CheXpert, digits, a dataset).

Import the pieces explicitly: ``from unrealnas.train.loop import fit``,
``from unrealnas.train.retrain import run_retrain``.
"""
