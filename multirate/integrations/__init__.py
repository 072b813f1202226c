"""Multirate in training frameworks, each an optional extra imported only when asked for.

- :mod:`multirate.integrations.huggingface` (``pip install multirate[huggingface]``):
  ``MultirateTrainer``, a ``transformers.Trainer``;
- :mod:`multirate.integrations.lightning` (``pip install multirate[lightning]``):
  ``MultirateModule``, a ``LightningModule`` mixin.

Importing this package imports neither framework.
"""
