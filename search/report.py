"""Rebuild report.html from an experiment folder (local, or a copy of one from S3/GCS).

python search/report.py runs/pathology-20250101-120000    # writes <folder>/report.html
"""

from __future__ import annotations

import argparse
import logging
import sys

from search.reporting.report import build_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("experiment_dir", help="the experiment folder, e.g. runs/pathology-2025...")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build_report(args.experiment_dir)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
