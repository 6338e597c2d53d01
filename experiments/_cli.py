"""The command line of every study: absl flags and ``ml_collections.config_flags``.

    python -m experiments.<study> [--workdir DIR] [--config=<file or name>[:smoke]]
                                  [--config.<key>=<value> ...]

As in the flax examples and big_vision: ``--config`` is a Python file with
``get_config(arg)`` (``:smoke`` is passed as ``arg``); a bare name is a file of
``experiments/configs/``; ``--config.<key>=<value>`` overrides a key, typed by the
config (comma lists such as ``--config.examples_per_class=5,10,all`` take the type of
the default's elements); an unknown key is an error that names the nearest valid one;
``--help`` lists every key with its value and what it means.
"""

from __future__ import annotations

import ast
import difflib
import errno
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import flags
from ml_collections import ConfigDict, config_flags

from experiments.configs._base import ConfigError, describe, flat_keys, get, renamed

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_HELP_FLAGS = ("-h", "--help", "-help", "--helpfull", "-?")


def config_names() -> list[str]:
    """The configs of ``experiments/configs/`` by name."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def resolve(spec: str) -> str:
    """``name[:arg]`` -> ``<configs>/name.py[:arg]``; a path is returned as it is.

    Raises:
      ConfigError: no such file (the message names the closest config).
    """
    path, sep, arg = spec.partition(":")
    if not path.endswith(".py") and os.sep not in path and "/" not in path:
        path = str(CONFIG_DIR / f"{path}.py")
    if not os.path.isfile(path):
        names = config_names()
        near = difflib.get_close_matches(Path(path).stem, names, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"no config file {path!r}.{hint} Give a .py file with "
                          f"get_config() or one of the names {names}.")
    return path + sep + arg


def load_config(spec: str) -> ConfigDict:
    """``get_config(arg)`` of ``spec`` (``file-or-name[:arg]``), locked against new keys."""
    path, _, arg = resolve(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_jaxkd_config_{Path(path).stem}",
                                                         path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"config file {path!r} has no get_config().")
        config = module.get_config(*([arg] if arg else []))
    except ConfigError:
        raise
    except Exception as e:  # the file's own failure, in one line (--debug: its traceback)
        raise ConfigError(f"config file {path!r} failed: {type(e).__name__}: "
                          f"{' '.join(str(e).split())}") from e
    if not isinstance(config, ConfigDict):
        raise ConfigError(f"config file {path!r}: get_config() returned a "
                          f"{type(config).__name__}; expected an ml_collections.ConfigDict.")
    config.lock()
    return config


def _config_spec(argv: Sequence[str], default: str) -> str:
    spec = default
    for i, arg in enumerate(argv):
        if arg in ("--config", "-config") and i + 1 < len(argv):
            spec = argv[i + 1]
        elif arg.startswith(("--config=", "-config=")):
            spec = arg.partition("=")[2]
    return spec


def _without_config(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in ("--config", "-config"):
            skip = i + 1 < len(argv)
        elif not arg.startswith(("--config=", "-config=")):
            out.append(arg)
    return out


def _override_keys(argv: Sequence[str]) -> list[str]:
    keys = []
    for arg in argv:
        name = arg.lstrip("-").partition("=")[0]
        if name.startswith(("config.", "noconfig.")):
            keys.append(name.partition(".")[2])
    return keys


def nearest_key(key: str, valid: Sequence[str]) -> str | None:
    """The valid key a user most plausibly meant by ``key``, or None.

    Among the keys of the same group (``train.num_step`` -> ``train.num_steps``) first,
    then all keys, comparing words (``.`` and ``_`` alike: ``search_sizes`` ->
    ``search.sizes``).
    """
    def words(k: str) -> str:
        return k.replace(".", "_")
    parent = key.rpartition(".")[0]
    for pool in ([k for k in valid if parent and k.rpartition(".")[0] == parent], valid):
        by_words = {words(k): k for k in pool}
        near = difflib.get_close_matches(words(key), list(by_words), n=1, cutoff=0.6)
        if near:
            return by_words[near[0]]
    return None


def _check_keys(config: ConfigDict, keys: Sequence[str]) -> None:
    valid = flat_keys(config)
    for key in keys:
        if key not in valid:
            if renamed(key):
                raise ConfigError(renamed(key))
            near = nearest_key(key, valid)
            hint = f"; did you mean --config.{near}?" if near else ""
            raise ConfigError(f"unknown config key {key!r}{hint} (--help lists every key).")


def _coerce(text: Any, like: Any) -> Any:
    if not isinstance(text, str):
        return float(text) if isinstance(like, float) and not isinstance(text, bool) else text
    text = text.strip()
    if isinstance(like, bool) or isinstance(like, str):
        return text
    for kind in ((int,) if isinstance(like, int) else (float,) if isinstance(like, float)
                 else (int, float)):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # e.g. "all" among examples-per-class counts


def _normalise_tuples(config: ConfigDict, default: ConfigDict, keys: Sequence[str]) -> None:
    """``("5,10,all",)`` -> ``(5, 10, "all")``: comma lists typed by the default's items."""
    for key in keys:
        before = get(default, key)
        if not isinstance(before, (tuple, list)):
            continue
        items = []
        for item in get(config, key):
            parts = item.split(",") if isinstance(item, str) else [item]
            items.extend(p for p in parts if not (isinstance(p, str) and not p.strip()))
        like = next((b for b in before if not isinstance(b, str)), before[0] if before
                    else None)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        with node.ignore_type():
            node[leaf] = tuple(_coerce(item, like) for item in items)


def usage(study: str, default_config: str, default_workdir: str, about: str = "") -> str:
    return ((f"{about}\n\n" if about else "")
            + f"usage: python -m experiments.{study} [--workdir DIR] "
            f"[--config=FILE_OR_NAME[:smoke]] [--config.KEY=VALUE ...]\n\n"
            f"  --workdir   where cells, checkpoints and results go (default: "
            f"{default_workdir}); the same DIR again resumes and skips finished cells\n"
            f"  --config    a .py file with get_config(arg), or a name of experiments/configs "
            f"({', '.join(config_names())}; default: {default_config}); ':smoke' runs it "
            f"tiny\n"
            f"  --config.KEY=VALUE   override one key below (lists: comma-separated)\n"
            f"  {DEBUG_FLAG}     show the traceback of a failure (or set {DEBUG_ENV}=1)\n")


def help_text(config: ConfigDict, spec: str, head: str) -> str:
    lines = [head, f"config keys of {spec} (current value: meaning):"]
    for key in flat_keys(config):
        lines.append(f"  --config.{key}={get(config, key)!r}")
        lines.append(f"      {describe(key) or '(no description)'}")
    return "\n".join(lines)


def parse(argv: Sequence[str], *, study: str, default_config: str,
          default_workdir: str, about: str = "") -> tuple[ConfigDict, str]:
    """``(config, workdir)`` from the command-line arguments ``argv`` (no program name);
    ``--help`` opens with ``about``, the study in one line.

    Raises:
      ConfigError: an unknown flag or key, a value of the wrong type, a missing config.
      SystemExit: ``--help`` (after printing every key with its meaning).
    """
    argv = list(argv)
    spec = _config_spec(argv, default_config)
    if any(a in _HELP_FLAGS for a in argv):
        print(help_text(load_config(spec), spec,
                        usage(study, default_config, default_workdir, about)))
        raise SystemExit(0)
    default = load_config(spec)
    keys = _override_keys(argv)
    _check_keys(default, keys)
    # The file was loaded above (``file[:arg]`` as config_flags' DEFINE_config_file does);
    # config_flags applies and types the overrides.
    args = [f"experiments.{study}", *_without_config(argv)]
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", default_workdir, "work directory", flag_values=values)
    holder = config_flags.DEFINE_config_dict("config", load_config(spec), "config",
                                             flag_values=values, lock_config=True,
                                             sys_argv=args)
    try:
        rest = values(args)
    except (flags.Error, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(str(e).strip().splitlines()[-1]) from None
    if len(rest) > 1:
        raise ConfigError(f"unexpected arguments {rest[1:]}; flags are --workdir, --config "
                          f"and --config.KEY=VALUE.")
    config = holder.value
    _normalise_tuples(config, default, keys)
    return config, values.workdir


def command_line(study: str, argv: Sequence[str]) -> str:
    """The command that ran ``study`` (for the results' header)."""
    return " ".join(["python -m experiments." + study, *argv])


DEBUG_FLAG = "--debug"
DEBUG_ENV = "JAXKD_DEBUG"
DEBUG_HINT = (f"(run again with {DEBUG_FLAG}, or {DEBUG_ENV}=1, to see the traceback)")

# What to do about an operating-system error, by errno.
_ERRNO_HINTS = {
    errno.ENOSPC: "free disk space (or give another --workdir) and run again: finished "
                  "runs are kept and an unfinished one resumes from its last checkpoint",
    errno.EDQUOT: "free space within your disk quota and run again: finished runs are kept "
                  "and an unfinished one resumes from its last checkpoint",
    errno.EFBIG: "the file outgrew the file-size limit (see `ulimit -f`) or the file "
                 "system's; raise the limit or use another --workdir, and run again",
    errno.EROFS: "the file system is read-only; give a --workdir on a writable one",
    errno.EACCES: "you may not write there; give a --workdir you can write",
    errno.EPERM: "you may not write there; give a --workdir you can write",
}


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """Whether failures keep their traceback: ``--debug`` or ``$JAXKD_DEBUG`` (not 0)."""
    return (DEBUG_FLAG in argv
            or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false"))


def _os_error(e: BaseException) -> OSError | None:
    """The ``OSError`` behind ``e`` (found as the library's checkpointer finds it: the
    cause/context chain, exception groups, tensorstore's ``os_error_code``); one with a
    known remedy (a full disk, say) before any other in the chain."""
    from jaxkd.training import _checkpoint
    return _checkpoint.os_error(e, _ERRNO_HINTS) or _checkpoint.os_error(e)


def _text(e: BaseException, max_lines: int = 8) -> str:
    lines = [line.rstrip() for line in str(e).strip().splitlines() if line.strip()]
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], "..."]
    return "\n".join(lines) or type(e).__name__


def failure_line(e: BaseException) -> str:
    """What the command line prints for the failure ``e``: ``error: ...``, one line or a
    few, naming the file or key and what to do.

    A bad config or command line, a work directory in use, made with another config or
    unsafe, a checkpoint that cannot be read or written, a non-finite loss: their own
    message. An operating-system error anywhere in the exception's chain (orbax's
    asyncio traces included): its reason, its file and what to do. Anything else: its
    message and type, and how to see the traceback (:data:`DEBUG_FLAG`).
    """
    from experiments import _workdir
    from jaxkd import training
    if isinstance(e, (ConfigError, _workdir.WorkdirError, training.CheckpointError,
                      training.NonFiniteLossError)):
        return "error: " + " ".join(str(e).split())
    os_error = _os_error(e)
    if os_error is not None:
        text = (f"{os_error.strerror or os_error}"
                + (f": {os_error.filename}" if os_error.filename else "")
                + ("" if isinstance(e, OSError) else f" ({type(e).__name__})"))
        hint = _ERRNO_HINTS.get(os_error.errno)
        return "error: " + " ".join(text.split()) + (f"; {hint}." if hint else
                                                     f". {DEBUG_HINT}")
    kind = type(e).__name__
    return f"error: {_text(e)} ({kind})\n{DEBUG_HINT}"


def _quiet_library_logs() -> None:
    """Drops what orbax and tensorstore print from their threads when a checkpoint write
    fails (absl error logs, asyncio task reports, "Event loop is closed"): the failure
    reaches the command line as one line anyway (:func:`failure_line`)."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if f"{os.sep}orbax{os.sep}" in (record.pathname or ""):
            return False
        return not (record.name == "asyncio" and "orbax" in record.getMessage())

    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if keep not in logger.filters:
            logger.addFilter(keep)
    if getattr(sys.unraisablehook, "_jaxkd_quiet", False):
        return
    previous = sys.unraisablehook

    def unraisable(info) -> None:
        if isinstance(info.exc_value, RuntimeError) and \
                str(info.exc_value) == "Event loop is closed":
            return
        previous(info)

    unraisable._jaxkd_quiet = True
    sys.unraisablehook = unraisable


def main(study: str, run: Callable[..., dict[str, Any]], console: Callable[[dict], str], *,
         default_config: str, default_workdir: str, about: str = "",
         argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses the command line and runs ``run(config, workdir, command=...)``, which
    validates the config, locks the work directory and trains (``_study.run``).

    Prints the study's main table (``console(summary)``), the plots and, last, the line
    ``results: <workdir>/results.md``. Any failure: ``error: ...`` on stderr
    (:func:`failure_line`, one line or a few) and exit status 1 (a ``--workdir`` that is
    empty or a file: status 2, a usage error); with ``--debug`` or ``$JAXKD_DEBUG=1``
    the failure keeps its traceback and the libraries' logs stay as they are.
    """
    from experiments import _workdir
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        config, workdir = parse(argv, study=study, default_config=default_config,
                                default_workdir=default_workdir, about=about)
    except ConfigError as e:
        if debug:
            raise
        raise SystemExit(f"error: {e}") from None
    try:
        _workdir.check(workdir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    command = command_line(study, argv)
    if not debug:
        _quiet_library_logs()
    try:
        summary = run(config, workdir, command=command)
    except Exception as e:
        if debug:
            raise
        raise SystemExit(failure_line(e)) from None
    text = console(summary)
    if text:
        print(text)
    for path in summary.get("plots", ()):
        print(f"plot: {path}")
    results = os.path.join(workdir, "results.md")
    if "teacher" not in summary:  # teacher_only writes no report
        print(f"results: {results}")
    return summary
