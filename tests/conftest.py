"""Test-wide settings: one intra-op thread, as the CLI uses (see ``metakit/cli.py``)."""

import torch

torch.set_num_threads(1)
