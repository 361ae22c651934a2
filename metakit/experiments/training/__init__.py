"""Meta-training: the configuration, the loop, run directories, torchrun."""
