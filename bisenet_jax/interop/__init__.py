"""PyTorch <-> Flax: official sssegmentation checkpoints and ImageNet ResNet files.

Flax child names equal the PyTorch module names, so the mapping is one rule
(``layout.py``) rather than a table. torch is imported lazily, only by the functions that
read or write ``.pth`` files.
"""
