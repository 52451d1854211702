"""Retraining: the one training loop, checkpoints, targets (CIFAR, ImageNet, CheXpert) and CLI verbs.

Import the pieces explicitly: ``from unrealnas.train.loop import fit``,
``from unrealnas.train.retrain import run_retrain``.
"""
