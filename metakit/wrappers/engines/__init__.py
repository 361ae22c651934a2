"""Engines: what turns an algorithm and a batch of tasks into a meta-gradient."""
