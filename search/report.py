"""Rebuild report.html from an experiment folder (local, or a copy of one from S3/GCS).

python search/report.py runs/pathology-20250101-120000    # writes <folder>/report.html

The folder must hold a finished search (search.json, trials.parquet: `check_complete`);
anything else is refused in one line, `error: ...; ...`, exit code 2, and nothing is written
there. An existing report.html is replaced only by a whole new page (written atomically), and
not by one on which a section failed (exit code 1).
"""

from __future__ import annotations

import argparse
import logging
import sys

from search.driver.options import Parser
from search.reporting.report import IncompleteExperiment, build_report, check_complete


def main(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="search/report.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("experiment_dir", help="the experiment folder, e.g. runs/pathology-2025...")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        check_complete(args.experiment_dir)
    except IncompleteExperiment as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        path = build_report(args.experiment_dir)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
