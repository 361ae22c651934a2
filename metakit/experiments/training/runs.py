"""A run directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, the lock ``.lock`` and,
for ``--select-on validation``, ``selected.pt``."""

import contextlib
import fcntl
import json
import os
import pickle
import socket
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

import torch

from metakit.experiments.methods import build_algorithm
from metakit.experiments.tasks import build_family
from metakit.experiments.training.config import PLACEMENT, TrainConfig
from metakit.experiments.util.errors import MetakitError, flag

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
SELECTED = "selected.pt"
"""``--select-on validation``: the meta-parameters with the best validation score so far, their
iteration and score (see :func:`save_selected`)."""
EVALUATION = "eval.json"
"""``metakit reproduce``'s cached evaluation of the finished run; removed whenever the run trains
again (started afresh, resumed or extended)."""
LOCK = ".lock"
"""Locked (``flock``) by the process training the run; records its pid, host and torchrun job."""
FORMAT_VERSION = 1


class RunError(MetakitError):
    """A path that is not (or cannot become) a run directory, or an unreadable checkpoint."""


def start_or_resume(
    run_dir: Path,
    config: Optional[TrainConfig] = None,
    resume: bool = False,
    force: bool = False,
    iterations: Optional[int] = None,
    placement: Optional[dict] = None,
) -> Tuple[TrainConfig, Optional[int]]:
    """``(config, resume_from)``: whether training ``config`` into ``run_dir`` starts afresh
    (``resume_from`` is ``None``), continues from the checkpoint of iteration ``resume_from``, or
    has nothing left to do (``resume_from`` has reached ``config.iterations``). Reads ``run_dir``
    and changes nothing; the first rule that applies decides:

    * ``config=None``: continue the run saved in ``run_dir``, with its own ``config.json`` (and
      ``iterations``, if given, in place of its own: a schedule extended, or shortened to no less
      than the checkpoint's iteration; ``placement``, a dict of :data:`PLACEMENT` options, in place
      of its own: a run moved to another device);
    * ``torchrun`` restarted the job that began ``run_dir`` (:func:`continues_elastic_job`):
      continue from its checkpoint, or start afresh if it wrote none yet;
    * ``resume``, and ``run_dir`` holds a loadable checkpoint of the same run (its ``config.json``
      is ``config`` but for ``compile``, which changes the speed, not the experiment): continue it;
    * otherwise start afresh, which a non-empty ``run_dir`` allows only with ``force``.

    A :class:`RunError` refuses a path that is no directory, a run another process is training, a
    folder that holds no run (``config=None``), and a run to continue none of whose checkpoints
    loads (``resume`` starts such a run over instead).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} exists and is not a directory")
    holder, busy = lock_holder(run_dir)
    if busy:
        raise RunError(_busy(run_dir, holder))
    if config is None:
        config = read_config(run_dir)
        done = _checkpoint_iteration(run_dir)
        if iterations is not None:
            if iterations < done:
                raise RunError(
                    f"{run_dir} has trained {done} iterations already; {flag('iterations')} must be at "
                    f"least {done}"
                )
            config = replace(config, iterations=iterations)
        unknown = set(placement or {}) - set(PLACEMENT)
        if unknown:
            raise ValueError(f"placement takes {', '.join(PLACEMENT)}, not {', '.join(sorted(unknown))}")
        return TrainConfig.from_dict({**config.to_dict(), **(placement or {})}), done
    if continues_elastic_job(run_dir, config):
        return config, _checkpoint_iteration(run_dir) if has_checkpoint(run_dir) else None
    if resume and _same_run(run_dir, config):
        try:
            return config, _checkpoint_iteration(run_dir)
        except RunError:  # no checkpoint loads: the run starts over
            pass
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise RunError(f"--out {run_dir} is not empty; choose another directory or pass --force")
    return config, None


def _same_run(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``run_dir`` holds a run of ``config``, :data:`PLACEMENT` aside."""
    try:
        saved = read_config(run_dir).to_dict()
    except RunError:
        return False
    aside = dict.fromkeys(PLACEMENT)
    return {**saved, **aside} == {**config.to_dict(), **aside}


def _checkpoint_iteration(run_dir: Path) -> int:
    """The iteration of the run's newest loadable checkpoint (:func:`load_latest_checkpoint`)."""
    return load_latest_checkpoint(run_dir)[0]["iteration"]


@contextlib.contextmanager
def lock_run(run_dir: Path):
    """Hold the run's lock for the ``with`` block, or raise :class:`RunError` naming its holder.

    The lock is an ``flock`` on ``RUN/.lock``, which the operating system releases when the
    process ends, however it ends: a killed run leaves no stale lock. The file stays, recording
    the last holder (pid, host and ``torchrun`` job id, see :func:`continues_elastic_job`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for wait in (0.02, 0.1, None):  # a moment for a probe by lock_holder to let go
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait is None:
                    raise RunError(_busy(run_dir, _read_holder(fd))) from None
                time.sleep(wait)
        job = os.environ.get("TORCHELASTIC_RUN_ID")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "job": job}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
        yield
    finally:
        os.close(fd)


def lock_holder(run_dir: Path) -> tuple:
    """``(holder, busy)``: the last trainer recorded in ``RUN/.lock`` (a dict with ``pid``, ``host``
    and ``job``, or ``None``) and whether it is training the run now. Creates and changes nothing."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return None, False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return _read_holder(fd), False
    except BlockingIOError:
        return _read_holder(fd), True
    finally:
        os.close(fd)


def _read_holder(fd: int) -> Optional[dict]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _busy(run_dir: Path, holder: Optional[dict]) -> str:
    who = "another process"
    if holder:
        who = f"process {holder.get('pid')} on {holder.get('host')}"
    return f"{run_dir} is being trained by {who}; wait for it to end or stop it first"


def continues_elastic_job(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``torchrun`` restarted this job after it began training ``run_dir`` with ``config``.

    ``torchrun`` restarts failed workers with the same command line and sets
    ``TORCHELASTIC_RESTART_COUNT`` > 0; the run is this job's when its lock file records this
    ``TORCHELASTIC_RUN_ID`` (unique per ``torchrun --standalone``; pass a unique ``--rdzv-id`` to
    multi-node jobs) and its ``config.json``, if written yet, is ``config``.
    """
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0 or job is None:
        return False
    holder, _ = lock_holder(run_dir)
    if holder is None or holder.get("job") != job:
        return False
    path = Path(run_dir) / CONFIG
    try:
        return not path.exists() or json.loads(path.read_text()) == config.to_dict()
    except ValueError:
        return False


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run has a checkpoint file (loadable or not)."""
    return any((Path(run_dir) / name).is_file() for name in (CHECKPOINT, PREVIOUS))


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that a crash leaves either the old file or the new one."""
    _atomic(path, lambda f: f.write(json.dumps(data, indent=2).encode() + b"\n"))


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write ``state`` (tensors and plain containers) as the run's checkpoint, crash-safely.

    The new file is written and fsynced under a temporary name; then the current checkpoint
    becomes ``checkpoint.prev.pt`` and the new one takes its place. At every moment at least one
    complete checkpoint exists.
    """
    current = run_dir / CHECKPOINT
    _atomic(
        current,
        lambda f: torch.save({"format": FORMAT_VERSION, **state}, f),
        before_replace=lambda: current.exists() and os.replace(current, run_dir / PREVIOUS),
    )


def save_selected(run_dir: Path, selection: Optional[dict]) -> None:
    """Write ``selection`` (``{"iteration", "metric", "score", "algorithm"}``: the best model on the
    validation episodes so far) as the run's ``selected.pt``, crash-safely (written and fsynced under
    a temporary name, then renamed over the old one); ``None`` removes it (nothing selected yet)."""
    if selection is None:
        (run_dir / SELECTED).unlink(missing_ok=True)
        return
    _atomic(run_dir / SELECTED, lambda f: torch.save({"format": FORMAT_VERSION, **selection}, f))


def _atomic(path: Path, write, before_replace=None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    if before_replace is not None:
        before_replace()
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_run(run_dir: Path) -> None:
    """Remove the files a previous run left in ``run_dir`` (used with ``--force``)."""
    for name in (
        CONFIG,
        METRICS,
        CHECKPOINT,
        PREVIOUS,
        CHECKPOINT + ".tmp",
        SELECTED,
        SELECTED + ".tmp",
        EVALUATION,
    ):
        (run_dir / name).unlink(missing_ok=True)


def truncate_metrics(run_dir: Path, iteration: int) -> Optional[str]:
    """Drop metric lines past ``iteration`` (written after the checkpoint a resume starts from) and
    lines that are no metric record (cut short by a crash, or garbled); returns a one-line note
    saying how many of those were removed, or ``None`` if there were none."""
    path = run_dir / METRICS
    if not path.exists():
        return None
    kept, garbled = [], []
    for number, line in enumerate(path.read_bytes().decode(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
            later = record.get("iteration", 0) > iteration
        except (ValueError, AttributeError, TypeError):  # a line cut short by a crash, or garbled
            garbled.append(str(number))
            continue
        if not later:
            kept.append(line + "\n")
    _atomic(path, lambda f: f.write("".join(kept).encode()))
    if not garbled:
        return None
    lines = "line" + "s" * (len(garbled) > 1)
    return f"{path} was repaired: removed unreadable {lines} {', '.join(garbled)}"


def training_seconds(run_dir: Path) -> Optional[float]:
    """The run's training wall time from ``metrics.jsonl``: each line's ``seconds`` counts from the
    start of its session, so the total adds the last value of every session (a resumed run starts
    again from 0); ``None`` without readable records."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return None
    sessions, last = [], None
    for line in path.read_bytes().decode(errors="replace").splitlines():
        try:
            seconds = float(json.loads(line)["seconds"])
        except (ValueError, KeyError, TypeError):
            continue
        if last is not None and seconds < last:  # a new session
            sessions.append(last)
        last = seconds
    return None if last is None else sum(sessions) + last


def append_metrics(run_dir: Path, record: dict) -> None:
    """Append one line to ``metrics.jsonl``."""
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_config(run_dir: Path) -> TrainConfig:
    """The run's configuration."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} is not a metakit run (no {CONFIG}); train one with `metakit train`")
    if not has_checkpoint(run_dir):
        raise RunError(
            f"{run_dir} has a {CONFIG} but no {CHECKPOINT}: its training stopped before the first "
            f"checkpoint; train it again with `metakit train --out {run_dir} --force` and the options "
            f"in {path}"
        )
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise RunError(f"{path} is not a valid run config: {err}") from None


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (``weights_only``: no code can run) and check its format."""
    try:
        with warnings.catch_warnings():  # e.g. torch's note on a plain pickle's protocol: the error says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            # not torch's advice (load it with weights_only=False), which would run its code
            raise RunError(
                f"cannot load checkpoint {path}: not a checkpoint metakit wrote (corrupt, or holding "
                "objects other than tensors and plain data); refused without running anything in it"
            ) from None
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(f"cannot load checkpoint {path}: {first_line}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise RunError(f"checkpoint {path} has an unsupported format (expected version {FORMAT_VERSION})")
    return state


def load_latest_checkpoint(run_dir: Path):
    """``(state, note)``: the newest loadable checkpoint of a run.

    If ``checkpoint.pt`` is missing, truncated, corrupt, unsafe or of another version, the previous
    checkpoint is used and ``note`` says why; if neither loads, :class:`RunError` names both.
    """
    run_dir = Path(run_dir)
    errors = []
    for name in (CHECKPOINT, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
        except RunError as err:
            errors.append(str(err))
            continue
        return state, ("; ".join(errors) + f"; using {path}") if errors else None
    raise RunError("; ".join(errors) or f"{run_dir} has no checkpoint")


class LoadedRun(NamedTuple):
    """A run read back by :func:`open_run`."""

    config: TrainConfig
    algo: torch.nn.Module
    note: Optional[str]
    """Why an older checkpoint was used, or ``None``."""
    iteration: int
    """The iteration whose meta-parameters ``algo`` holds (of ``config.iterations``)."""
    trained: int
    """The iteration of the run's newest loadable checkpoint: how far it has trained."""
    selected: Optional[dict]
    """``{"iteration", "metric", "score"}`` of the model ``algo`` holds where it was selected on the
    validation episodes (``--select-on validation``), else ``None``."""


def load_run(run_dir: Path, data_root: Optional[str] = None):
    """``(config, algorithm, note)`` of a run: :func:`open_run` without the iterations."""
    return tuple(open_run(run_dir, data_root))[:3]


def open_run(run_dir: Path, data_root: Optional[str] = None) -> LoadedRun:
    """A run with the meta-parameters it is evaluated with (on the CPU): its newest loadable
    checkpoint's, or for a run trained with ``--select-on validation`` the selected ones
    (:func:`selected_state`); ``data_root`` replaces the run's data folder (data that has moved)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if data_root is not None:
        config = replace(config, data_root=str(data_root))
    state, note = load_latest_checkpoint(run_dir)
    chosen, selected = state, None
    if config.select_on == "validation":
        chosen, why = selected_state(run_dir, state)
        note = "; ".join(n for n in (note, why) if n) or None
        if chosen is not state:
            selected = {key: chosen[key] for key in ("iteration", "metric", "score")}
    algo = build_algorithm(config, build_family(config))
    try:
        algo.load_state_dict(chosen["algorithm"])
    except (KeyError, RuntimeError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise RunError(f"the checkpoint in {run_dir} does not match its {CONFIG}: {first_line}") from None
    return LoadedRun(config, algo, note, int(chosen["iteration"]), int(state["iteration"]), selected)


def selected_state(run_dir: Path, checkpoint: dict) -> tuple:
    """``(state, note)``: the model a run trained with ``--select-on validation`` selected:
    ``selected.pt``; where that is missing or does not load, the copy of the selection that
    ``checkpoint`` (the newest loadable one) holds; where nothing was selected yet, ``checkpoint``
    itself. ``note`` says why where it is not ``selected.pt``, else it is ``None``."""
    path = Path(run_dir) / SELECTED
    problem = f"{path} is missing"
    if path.exists():
        try:
            return load_checkpoint(path), None
        except RunError as err:
            problem = str(err)
    kept = checkpoint.get("selection")
    if kept is not None:
        return (
            kept,
            f"{problem}; using the model selected at iteration {kept['iteration']}, saved in the checkpoint",
        )
    unreadable = f"{problem}; " if path.exists() else ""
    return checkpoint, (
        f"{unreadable}no model was selected on validation yet; evaluating the checkpoint of iteration "
        f"{checkpoint['iteration']}"
    )
