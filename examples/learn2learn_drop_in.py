"""Sinusoid meta-training written like a learn2learn MAML example, with metakit as a drop-in.

The script is an ordinary learn2learn loop: for every task, ``learner = maml.clone()``, adapt it on
the support points, back-propagate its query loss; average the gradients over the tasks and step
the optimizer. ``--algorithm`` picks the object that loop trains, and nothing else:

* ``l2l``: ``learn2learn.algorithms.MAML`` (the model initialisation is meta-learned);
* ``metakit``: ``metakit.wrappers.MAMLEnhanced``, which also meta-learns a Meta-Curvature transform
  of every inner gradient and a learning rate per parameter tensor and inner step.

    python examples/learn2learn_drop_in.py --algorithm l2l --iterations 1000
    python examples/learn2learn_drop_in.py --algorithm metakit --iterations 1000

Both run with one intra-op thread unless ``OMP_NUM_THREADS`` is set: the operations of a small model
are tiny, and PyTorch's default of one thread per core made this script several times slower
(see the README's Python API section).
"""

import argparse
import os

import torch
from torch import nn

# Imported before learn2learn on purpose: metakit imports learn2learn once with the deprecation
# banner that learn2learn's `gym` dependency prints silenced (metakit/_l2l.py); Python caches the
# module, so the plain `import learn2learn` below prints nothing either.
from metakit.wrappers import MAMLEnhanced

# isort: split
import learn2learn as l2l


def sample_tasks(count, points, generator):
    """``count`` sinusoid tasks y = A·sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]; for each
    task ``(x, y)`` of shape ``[points, 1]``."""
    amplitude = 0.1 + 4.9 * torch.rand(count, 1, 1, generator=generator)
    phase = torch.pi * torch.rand(count, 1, 1, generator=generator)
    x = -5.0 + 10.0 * torch.rand(count, points, 1, generator=generator)
    return list(zip(x, amplitude * torch.sin(x - phase)))


def query_loss(maml, task, shots, adapt_steps, loss_fn):
    """Adapt a clone of ``maml`` to the first ``shots`` points of ``task``; its loss on the rest."""
    x, y = task
    learner = maml.clone()
    for _ in range(adapt_steps):
        learner.adapt(loss_fn(learner(x[:shots]), y[:shots]))
    return loss_fn(learner(x[shots:]), y[shots:])


def mean_query_loss(maml, tasks, shots, adapt_steps, loss_fn):
    """Mean query loss over ``tasks`` after adaptation (no meta-gradient is kept)."""
    return sum(query_loss(maml, t, shots, adapt_steps, loss_fn).item() for t in tasks) / len(tasks)


def main():
    """Parse the options, build the chosen algorithm and meta-train it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--algorithm",
        choices=("l2l", "metakit"),
        default="l2l",
        help="learn2learn's MAML or metakit's MAMLEnhanced (default l2l)",
    )
    parser.add_argument("--iterations", type=int, default=1000, help="meta-updates")
    parser.add_argument("--meta-batch", type=int, default=25, help="tasks per meta-update")
    parser.add_argument("--shots", type=int, default=10, help="support (and query) points per task")
    parser.add_argument("--adapt-steps", type=int, default=1, help="inner SGD steps per task")
    parser.add_argument("--fast-lr", type=float, default=0.01, help="inner learning rate")
    parser.add_argument("--meta-lr", type=float, default=0.001, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation and tasks")
    args = parser.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # tiny operations: one thread is fastest (the metakit CLI does the same)
    print(f"intra-op threads: {torch.get_num_threads()}")

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    if args.algorithm == "l2l":
        maml = l2l.algorithms.MAML(model, lr=args.fast_lr)
    else:
        maml = MAMLEnhanced(model, lr=args.fast_lr, inner_steps=args.adapt_steps)
    opt = torch.optim.Adam(maml.parameters(), lr=args.meta_lr)
    loss_fn = nn.MSELoss()

    # A fixed set of tasks, never trained on, on which the meta-loss is reported.
    validation = sample_tasks(100, 2 * args.shots, torch.Generator().manual_seed(10_000 + args.seed))
    start = mean_query_loss(maml, validation, args.shots, args.adapt_steps, loss_fn)
    print(f"meta-loss at the start: {start:.4f}")

    for iteration in range(1, args.iterations + 1):
        opt.zero_grad()
        train_loss = 0.0
        for task in sample_tasks(args.meta_batch, 2 * args.shots, generator):
            loss = query_loss(maml, task, args.shots, args.adapt_steps, loss_fn)
            loss.backward()
            train_loss += loss.item()
        for p in maml.parameters():  # the meta-gradient is the mean over tasks
            if p.grad is not None:
                p.grad.mul_(1.0 / args.meta_batch)
        opt.step()
        if iteration % 100 == 0:
            print(f"iteration {iteration}: meta-train loss {train_loss / args.meta_batch:.4f}")

    end = mean_query_loss(maml, validation, args.shots, args.adapt_steps, loss_fn)
    print(f"meta-loss at the end: {end:.4f}")


if __name__ == "__main__":
    main()
