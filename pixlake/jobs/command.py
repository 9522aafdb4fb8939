"""A command: flags, the pydantic config they build, and ``run(config)``.

Every ``pixlake`` subcommand is a :class:`Job`, declared once in its module under
``pixlake/jobs/`` and mounted by ``pixlake/cli.py`` from its table; the same object is the
module's ``python -m pixlake.jobs.<module>`` entry point (:meth:`Job.main`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from pydantic import BaseModel, ConfigDict

from pixlake.jobs.common import run_main, validated


class JobConfig(BaseModel):
    """Base of the jobs' configs: validated once from flags, then passed to ``run``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    @classmethod
    def of(cls, args: argparse.Namespace, **values: Any):
        """The config of parsed flags: each field from the flag of its name unless ``values``
        gives it; an invalid value becomes a one-line ConfigError."""
        flags = {name: getattr(args, name) for name in cls.model_fields if hasattr(args, name)}
        return validated(cls, {**flags, **values})


@dataclass(frozen=True)
class Job:
    """One command.

    Attributes:
        name: the ``pixlake`` subcommand (``plan-index``).
        help: its line in ``pixlake --help``.
        module: the module's name (its ``__spec__.name``, which ``python -m`` keeps, unlike
            ``__name__``); its docstring describes the standalone command.
        flags: adds the command's flags to a parser.
        config: parsed flags -> the job's validated pydantic config.
        run: the job itself, ``run(config) -> exit code``.
        verbose: the job starts Ray: ``--verbose`` shows Ray's own log lines, which
            otherwise go to a log file while the job shows its progress.
    """

    name: str
    help: str
    module: str
    flags: Callable[[argparse.ArgumentParser], None]
    config: Callable[[argparse.Namespace], Any]
    run: Callable[[Any], int]
    verbose: bool = False

    def build_parser(self, parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
        """The command's flags on ``parser`` (a ``pixlake`` subparser), or on a new parser for ``python -m``."""
        if parser is None:
            # run as `python -m`, the module is __main__, not (also) in sys.modules under its name
            module = sys.modules.get(self.module) or sys.modules["__main__"]
            parser = argparse.ArgumentParser(prog=f"python -m {self.module}", description=module.__doc__)
        self.flags(parser)
        if self.verbose:
            parser.add_argument("--verbose", action="store_true",
                                help="show Ray's own log lines (otherwise written to a log file)")
        return parser

    def execute(self, args: argparse.Namespace) -> int:
        """Run the job for parsed flags; returns the exit code."""
        config = self.config(args)  # a bad flag fails before Ray is imported
        if not self.verbose:
            return self.run(config)
        from pixlake.jobs.console import ray_logs

        with ray_logs(self.name, verbose=args.verbose):
            return self.run(config)

    def main(self, argv: Optional[Sequence[str]] = None) -> int:
        """Entry point of ``python -m <module>``."""
        return run_main(lambda: self.execute(self.build_parser().parse_args(argv)))
