"""metakit: gradient-based meta-learning for PyTorch.

The algorithms live in :mod:`metakit.wrappers` (imported on demand, since they load torch and
learn2learn); the experiments and the ``metakit`` command line in :mod:`metakit.experiments` and
:mod:`metakit.cli`.
"""

__version__ = "0.1.0"
