"""YAML → typed dataclass configs, with ``key=value`` overrides.

Every config in the project is a plain (nested) dataclass that validates itself in
``__post_init__``. This module only moves values into them: it rejects unknown keys and
wrong types before any work starts, always naming the dotted key at fault.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import signal
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")
DeviceChoice = Literal["auto", "cuda", "cpu"]  # auto: the GPU when there is one (``pipeline.device``)


class UserError(Exception):
    """A mistake the user can fix: a bad config, a missing input, an output in the way, a file
    that is not what its key says. Entry points print the message as one line and exit with
    status 2; any other exception is a bug in our code and keeps its traceback."""


class InputNotFound(UserError, FileNotFoundError):
    """An input the config names is not there."""


class OutputInTheWay(UserError, FileExistsError):
    """The output folder holds something this job must not mix with or replace."""


class BadInput(UserError, ValueError):
    """A file or folder that cannot be what its key says (its message names the key)."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message names the offending key."""


class JobIncomplete(Exception):
    """Work that faults (lost nodes, dying workers) kept this run from finishing and that a rerun
    finishes; the message says how. Entry points print it as one line and exit with status 3."""


def exit_on_user_error(job: Callable[[], T], interrupted: str = "stopped by Ctrl-C") -> T:
    """Run an entry point's work; a :class:`UserError` becomes one line on stderr and exit 2, a
    :class:`JobIncomplete` one line and exit 3, Ctrl-C (or prep's SIGINT/SIGTERM) one line and
    128 + the signal (:func:`interrupted_status`)."""
    try:
        return job()
    except UserError as e:
        raise SystemExit(user_error_status(e)) from None
    except JobIncomplete as e:
        print(f"incomplete: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    except KeyboardInterrupt as e:
        raise SystemExit(interrupted_status(e, interrupted)) from None


def interrupted_status(e: KeyboardInterrupt, default: str = "stopped by Ctrl-C") -> int:
    """Print an interruption as one stderr line (its message says what is complete, if it knows;
    else ``default``); its exit status, 128 + the signal (``signum``, else SIGINT's)."""
    print(f"interrupted: {str(e) or default}", file=sys.stderr)
    return 128 + getattr(e, "signum", signal.SIGINT)


def user_error_status(e: Exception) -> int:
    """Print a user's mistake as the one stderr line every entry point gives for it ("config
    error" when a key is at fault, so the user looks at the config first); its exit status, 2."""
    print(f"{'config error' if isinstance(e, ConfigError) else 'error'}: {e}", file=sys.stderr)
    return 2


def one_line(text: object, limit: int = 200) -> str:
    """``text`` quoted in a one-line message: whitespace runs (newlines too) as one space, cut to
    ``limit`` characters; what an exception says may be a traceback or a file's contents."""
    return " ".join(str(text).split())[:limit]


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build ``cls`` from a YAML file (optional) and ``a.b=value`` overrides (YAML-parsed values)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"config file {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        data = loaded or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            problem = str(e).splitlines()[0]
            raise ConfigError(
                f"{key.strip()}: {raw!r} is not a YAML value ({problem}); quote it: {key.strip()}='\"{raw}\"'"
            ) from e
        _set_dotted(data, key.strip(), value)
    return build(cls, data)


def config_from_command_line(cls: type[T], description: str, argv: list[str] | None = None) -> T:
    """``--config FILE key=value ...``, the command line of every entry script; also sets up logging.

    A bad config exits with status 2 and a message naming the key, before any work starts.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file (configs/*/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value (YAML value), e.g. output=runs/x")
    args = parser.parse_args(argv)
    setup_logging()
    return exit_on_user_error(lambda: load_config(cls, args.config, args.overrides))


def setup_logging() -> None:
    """Our lines at INFO, and warnings. Libraries that log through the root logger itself
    (open_clip: which config and file it loaded, on every model built) are heard from at WARNING
    only, and open_clip's "No pretrained weights loaded ... initialized randomly" not at all: it
    comes for every model whose weights we load next (an export, a checkpoint), and the backbone
    line says what was loaded."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_library_chatter)


def _not_library_chatter(record: logging.LogRecord) -> bool:
    if record.name != "root":  # our modules (and well-behaved libraries) log under their name
        return True
    return record.levelno >= logging.WARNING and not record.getMessage().startswith(
        "No pretrained weights loaded"
    )


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    missing = [
        n
        for n, f in fields.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: required")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        config = cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # from __post_init__, which names its own field
        message = str(e)
        raise ConfigError(message if message.startswith(prefix) else prefix + message) from e
    _check_finite(config, prefix)
    return config


def at_least(config: Any, minimum: float, *names: str) -> None:
    """Fail naming the first of the fields ``names`` whose value is below ``minimum``, NaN or
    infinite (an unset optional field, None, passes): the one way configs check their numbers."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not (is_finite(value) and value >= minimum):
            raise _number_error(name, f">= {minimum}", value)


def positive(config: Any, *names: str) -> None:
    """Fail naming the first of the fields ``names`` whose value is not a finite number > 0."""
    for name in names:
        value = getattr(config, name)
        if not (is_finite(value) and value > 0):
            raise _number_error(name, "> 0", value)


def is_finite(value: float) -> bool:
    """Not NaN nor ±inf: a learning rate of ``1e999`` (YAML reads it as inf) trains nothing."""
    return isinstance(value, int) or math.isfinite(value)


def _number_error(name: str, rule: str, value: float) -> ValueError:
    return ValueError(f"{name}: must be {rule}, got {value}{'' if is_finite(value) else ' (not finite)'}")


def check_choices(config: Any) -> None:
    """Every ``Literal`` field of the dataclass ``config`` holds one of its values. ``build``
    checks YAML the same way; this covers configs made in code. The ``Literal`` is the one list."""
    for name, tp in typing.get_type_hints(type(config)).items():
        allowed = typing.get_args(tp)
        if typing.get_origin(tp) is typing.Literal and getattr(config, name) not in allowed:
            raise ValueError(
                f"{name}: {getattr(config, name)!r} is not one of {', '.join(map(repr, allowed))}"
            )


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (for manifests and logs)."""
    return dataclasses.asdict(config)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, f"{key}.")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is Any:
        return value
    if tp is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        return _to_float(value, key)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # "run=7" parses as an int; a name field still wants a str
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _to_float(value: int | float | str, key: str) -> float:
    """PyYAML (YAML 1.1) reads 1e-5 as a string, not a float, hence the strings."""
    try:
        return float(value)
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise ConfigError(f"{key}: expected float, got {str(value)[:50]!r}") from None


def _check_finite(config: Any, prefix: str) -> None:
    """Every float key, with or without a check of its own, is a number: NaN and ±inf (YAML's
    ``.inf``, or ``1e999``) are refused, in lists too. Nested configs checked themselves."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{prefix}{f.name}: must be a finite number, got {value}")


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])}: not a section, cannot set {key}")
        node = child
    node[leaf] = value
