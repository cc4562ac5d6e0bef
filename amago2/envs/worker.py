"""The worker process of an async `EnvPool`: its command loop, the messages on its pipe, and
the parent's gin bindings it replays.

A worker builds envs[offset : offset + k] from pickled factories, then serves commands
until told to close or until the parent goes away. Every message is one pickled tuple:

    parent -> worker:  ("reset", seeds or None) | ("step", actions [k, ...]) | ("close", None)
                       | ("snapshot", None) | ("restore", [pickled env] * k)
    worker -> parent:  ("ok", result) | ("error", (env index, env name, phase, traceback text))

("snapshot", None) answers with `batching.snapshot_envs` of the slice (for a checkpoint);
("restore", blobs) replaces the slice's envs by those pickles (for a resume).

The first reply, sent unasked once the envs are built, is ("ok", (descriptions, notes)):
one `describe_env` dict per env and the warnings of the gin replay.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import traceback
from typing import Any, Callable, List, NamedTuple, Sequence, Tuple

import gin
from gin import config_parser

from amago2.envs.batching import EnvPoolError, describe_env, reset_envs, restore_envs, snapshot_envs, step_envs

try:
    import cloudpickle as _cloudpickle
except ImportError:  # pragma: no cover - cloudpickle comes with gymnasium
    _cloudpickle = None

_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


def send_message(conn: Any, message: Any) -> None:
    """Send one message over a `multiprocessing` connection."""
    # Connection.send builds a new ForkingPickler (copying its dispatch table) per message,
    # which costs more than stepping a small env; plain pickle of the message is ~5x cheaper.
    conn.send_bytes(pickle.dumps(message, protocol=_PICKLE_PROTOCOL))


def receive_message(conn: Any) -> Any:
    """Receive one message sent by `send_message` (blocks; EOFError when the other end is gone)."""
    return pickle.loads(conn.recv_bytes())


def pickle_env_fn(fn: Callable[..., Any], index: int) -> bytes:
    """env_fns[index] as bytes for a worker: cloudpickled, so lambdas and closures travel too."""
    try:
        if _cloudpickle is not None:
            return _cloudpickle.dumps(fn)
        return pickle.dumps(fn)
    except Exception as e:
        hint = "" if _cloudpickle is not None else " (install cloudpickle to send lambdas and closures)"
        raise ValueError(
            f"EnvPool(mode='async'): env_fns[{index}] = {fn!r} cannot be pickled for the worker "
            f"process{hint}: {type(e).__name__}: {e}. Make it a module-level function or a "
            f"functools.partial of picklable arguments (not an env instance), or use mode='sync'."
        ) from e


# --------------------------------------------------------------------------------------
# gin bindings
# --------------------------------------------------------------------------------------


class GinState(NamedTuple):
    """The parent's gin bindings, as a worker replays them.

    text:    `gin.config_str()`, every binding of the parent as gin config text.
    modules: the modules defining the bound configurables. A worker is a fresh interpreter,
             so it imports them before replaying `text`, or gin would not know the names.
    """

    text: str
    modules: Tuple[str, ...]


class _IgnoreValues(config_parser.ParserDelegate):
    """Parses references and macros in binding values to nothing: only the keys are read."""

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> None:
        return None

    def macro(self, macro_name: str) -> None:
        return None


def capture_gin_state() -> GinState:
    """The parent's gin bindings and the modules defining the bound configurables.

    Without this an env configured by gin (e.g. `TMaze.horizon = 10`) would silently use its
    defaults in async mode."""
    try:
        text = gin.config_str()
    except Exception:  # a value gin cannot print: the worker warns about missing bindings
        return GinState("", ())
    # gin lists its bound configurables nowhere public, but the config text names each one
    # in its binding keys: read those with gin's own parser and ask gin for the configurable.
    modules = set()
    try:
        for statement in config_parser.ConfigParser(text, _IgnoreValues()):
            # A binding without an argument name is a macro (`NAME = value`), not a configurable.
            if not isinstance(statement, config_parser.BindingStatement) or not statement.arg_name:
                continue
            try:
                configurable = gin.get_configurable(statement.selector)
            except ValueError:  # not in the registry
                continue
            modules.add(configurable.__module__)
    except Exception:  # best effort: the config text alone covers amago2's own modules
        pass
    modules.discard("__main__")  # not importable under that name in a worker
    return GinState(text, tuple(sorted(modules)))


def replay_gin_state(state: GinState) -> List[str]:
    """Apply the parent's gin bindings in this process; returns notes on what was skipped."""
    notes: List[str] = []
    if not state.text.strip():
        return notes
    for name in state.modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            notes.append(f"could not import {name} ({type(e).__name__}: {e}); its gin bindings are skipped")
    try:
        gin.parse_config(state.text, skip_unknown=True)
    except Exception as e:
        notes.append(f"could not replay the gin config ({type(e).__name__}: {e}); envs use their defaults")
    return notes


# --------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------


def spawn_worker(ctx: Any, payloads: Sequence[bytes], offset: int, gin_state: GinState) -> Tuple[Any, Any]:
    """Start a worker for the envs of `payloads` (global indices from `offset`) in the
    multiprocessing context `ctx`; returns (process, the parent's end of its pipe)."""
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(
        target=run_worker,
        args=(child_conn, list(payloads), offset, gin_state),
        name=f"amago2-EnvPool-worker-{offset}-{offset + len(payloads)}",
        daemon=True,  # never outlive the parent
    )
    proc.start()
    # The parent's copy of the child's end must go, so that recv() sees EOF if the
    # worker dies instead of blocking forever.
    child_conn.close()
    return proc, parent_conn


def _error_reply(e: EnvPoolError) -> Tuple[str, Tuple[int, str, str, str]]:
    return "error", (e.env_index, e.env_name, e.phase, e.traceback_text)


def run_worker(conn: Any, payloads: List[bytes], offset: int, gin_state: GinState) -> None:
    """Worker loop: build envs[offset : offset + len(payloads)], then serve commands."""
    # Ctrl-C reaches the whole process group; the parent handles it and closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # n workers each running a full-size math thread pool would oversubscribe the cores.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    envs: List[Any] = []
    try:
        # Unpickle first: it imports the modules the factories live in (and so registers
        # their gin configurables) before the config is replayed.
        fns = []
        for j, payload in enumerate(payloads):
            try:
                fns.append(pickle.loads(payload))
            except Exception as e:
                tb = traceback.format_exc()
                raise EnvPoolError(offset + j, f"env_fns[{offset + j}]", "unpickling in the worker", tb) from e
        notes = replay_gin_state(gin_state)
        for j, fn in enumerate(fns):
            try:
                envs.append(fn())
            except Exception as e:
                raise EnvPoolError(offset + j, f"env_fns[{offset + j}]", "construction", traceback.format_exc()) from e
        send_message(conn, ("ok", ([describe_env(env) for env in envs], notes)))
    except EnvPoolError as e:
        send_message(conn, _error_reply(e))
    while True:
        try:
            cmd, arg = receive_message(conn)
        except (EOFError, OSError):  # the parent is gone
            break
        if cmd == "close":
            break
        try:
            if cmd == "step":
                send_message(conn, ("ok", step_envs(envs, arg, offset)))
            elif cmd == "reset":
                send_message(conn, ("ok", reset_envs(envs, arg, offset)))
            elif cmd == "snapshot":
                send_message(conn, ("ok", snapshot_envs(envs)))
            elif cmd == "restore":
                restore_envs(envs, arg, offset)
                send_message(conn, ("ok", None))
            else:
                send_message(conn, ("error", (offset, "?", f"unknown command {cmd!r}", "")))
        except EnvPoolError as e:
            send_message(conn, _error_reply(e))
        except (BrokenPipeError, EOFError):
            break
        except Exception:  # most likely a result that cannot be pickled (an info value)
            tb = traceback.format_exc()
            where = f"envs {offset}..{offset + len(envs) - 1}"
            send_message(conn, ("error", (offset, where, f"sending the {cmd} result", tb)))
    for env in envs:
        try:
            env.close()
        except Exception:
            pass
    conn.close()
