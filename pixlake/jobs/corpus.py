"""Write a seeded, captioned synthetic corpus: ``pixlake corpus --out DIR [--n N] [--seed S] [--holdout H]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pixlake.jobs.command import Job, JobConfig
from pixlake.jobs.common import emit


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the corpus writer."""
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of rows with split=holdout (default 0.2)")


class CorpusConfig(JobConfig):
    """Where, how many images, the seed and the holdout share."""

    out: Path
    n: int = 1000
    seed: int = 0
    holdout: float = 0.2


def config_of(args: argparse.Namespace) -> CorpusConfig:
    """The writer's config; ``--n`` below 1 or ``--holdout`` outside [0, 1] is a ConfigError."""
    from pixlake.platform.errors import ConfigError

    if args.n < 1 or not 0 <= args.holdout <= 1:
        raise ConfigError("--n must be at least 1 and --holdout within [0, 1]")
    return CorpusConfig.of(args)


def run(config: CorpusConfig) -> int:
    """Write the corpus; prints where. Returns the exit code."""
    from pixlake.platform.corpus import MANIFEST, write_corpus

    paths = write_corpus(config.out, config.n, seed=config.seed, holdout=config.holdout)
    emit(f"wrote {len(paths)} images to {config.out / 'images'} and the manifest {config.out / MANIFEST}")
    return 0


JOB = Job("corpus", "write a seeded captioned synthetic corpus (images + Parquet manifest)", __spec__.name, add_flags,
          config_of, run)
build_parser, main = JOB.build_parser, JOB.main

if __name__ == "__main__":
    sys.exit(main())
