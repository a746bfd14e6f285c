"""Runs one command-line entry point: its absl flags, `--help`, quiet logs, one line per failure.

Every command (`mtvjax SUBCOMMAND`, `python -m data_pipeline.build|latents`,
`python -m mtvjax.tools.ablate`) goes through `run_command(main, argv, prog, doc)`:

* `--help` prints `doc` and the command's own flags and exits 0;
* flags are parsed here (not by `absl.app`), so a bad flag or config override is one line;
* library logging below WARNING stays off unless `--verbose` (or `MTVJAX_VERBOSE=1`);
* an expected failure (`mtvjax.errors.classify`) prints `PROG: message` and exits non-zero;
  with `--verbose` the traceback comes first. Other exceptions keep their traceback;
* freed host memory is kept for reuse (`mtvjax.host_memory`), before anything computes.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import textwrap
import traceback

from mtvjax.errors import EXIT_USAGE, UsageError, classify, one_line
from mtvjax.host_memory import keep_freed_host_memory

VERBOSE_ENV = "MTVJAX_VERBOSE"
VERBOSE_FLAGS = ("--verbose", "-verbose")
HELP_FLAGS = ("--help", "-h", "-help", "--helpshort", "--helpfull")
OVERRIDE = re.compile(r"^--?(?:no)?([A-Za-z_][\w-]*\.[\w.]+)")


def split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """`argv` without `--verbose`, and whether it (or `MTVJAX_VERBOSE=1`) asked for tracebacks."""
    rest = [a for a in argv if a not in VERBOSE_FLAGS]
    env = os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")
    return rest, env or len(rest) != len(argv)


def configure_logging(verbose: bool) -> None:
    """absl/Python logging at INFO with `--verbose`, else only warnings and errors."""
    from absl import logging as absl_logging
    level = logging.INFO if verbose else logging.WARNING
    absl_logging.use_absl_handler()
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    logging.getLogger().setLevel(level)


def _flag_line(flag) -> str:
    default = "" if flag.default is None else f" (default: {flag.default})"
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    text = f"{flag.help}{default}"
    return textwrap.fill(text, 96, initial_indent=f"  {name}\n      ",
                         subsequent_indent="      ") if len(name) > 18 else \
        textwrap.fill(text, 96, initial_indent=f"  {name:<18}  ", subsequent_indent=" " * 22)


def help_text(prog: str, doc: str, module: str) -> str:
    """`doc` and the flags that `module` defines, plus `--verbose`."""
    from absl import flags
    by_module = flags.FLAGS.flags_by_module_dict()
    # absl files flags defined under `python -m` by the script path rather than "__main__"
    own = by_module.get(module, []) + (by_module.get(sys.argv[0], []) if module == "__main__" else [])
    lines = [f"usage: {prog} [flags]", "", textwrap.dedent(doc or "").strip(), "", "flags:"]
    lines += [_flag_line(f) for f in sorted(own, key=lambda f: f.name)]
    lines.append(f"  {'--verbose':<18}  Tracebacks and library INFO logs (or {VERBOSE_ENV}=1).")
    return "\n".join(lines)


def _override_error(argv: list[str], error: Exception) -> UsageError:
    """An unknown `--config.a.b` key (ml_collections raises a bare Attribute/KeyError)."""
    missing = str(error.args[0] if error.args else error).strip("'\" ")
    for arg in argv:
        match = OVERRIDE.match(arg)
        if match and missing in match.group(1).split("."):
            return UsageError(f"--{match.group(1)}: unknown config key {missing!r}")
    return UsageError(f"bad flags: {one_line(error)}")


def parse_flags(argv: list[str]) -> list[str]:
    """Parses absl flags (and config overrides) in `argv`; the positional arguments left."""
    from absl import flags
    try:
        positional = flags.FLAGS(argv)
    except flags.Error as e:
        # a config file's own error arrives as text with its traceback: keep the last line
        head, _, rest = str(e).partition("Traceback (most recent call last):")
        raise UsageError(one_line(head + (rest.strip().splitlines() or [""])[-1])) from e
    except (AttributeError, KeyError) as e:
        raise _override_error(argv, e) from e
    for name in list(flags.FLAGS):
        _check_config_loaded(flags.FLAGS[name])
    return positional


def _check_config_loaded(flag) -> None:
    """ml_collections defers a missing config file's error to the first use of the config."""
    report = getattr(flag.value, "_ReportError", None) if type(flag).__module__.startswith(
        "ml_collections") else None
    if not callable(report):
        return
    try:
        report()
    except OSError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UsageError(f"--{flag.name}: {lines[-1]}") from e


def run_command(main, argv: list[str], prog: str, doc: str = "") -> None:
    """Parses flags in `argv` (argv[0] is the program), runs `main(positional)`, reports errors."""
    argv, verbose = split_verbose(list(argv))
    keep_freed_host_memory()
    try:
        if any(a in HELP_FLAGS for a in argv[1:]):
            from absl import flags
            full = "--helpfull" in argv
            print(flags.FLAGS.get_help() if full else help_text(prog, doc, main.__module__))
            sys.exit(0)
        positional = parse_flags([prog] + argv[1:])
        configure_logging(verbose)
        main(positional)
    except Exception as e:  # noqa: BLE001 - sorted into expected (one line) and bugs (traceback)
        code = classify(e)
        if code is None:
            raise
        if verbose:
            traceback.print_exc()
        print(f"{prog}: {one_line(e)}", file=sys.stderr)
        sys.exit(code)


def usage_exit(prog: str, message: str) -> None:
    """Exits with `PROG: message` and the usage status (for dispatchers before any flags)."""
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
