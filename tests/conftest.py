"""Test-wide settings as the CLI uses them (see ``metakit/cli.py``): one intra-op thread, and freed
memory kept in the heap."""

import torch

from metakit.experiments.util.allocator import keep_freed_memory

torch.set_num_threads(1)
keep_freed_memory()
