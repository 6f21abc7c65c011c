"""Count the per-image profiles of every architecture the shipped suites plan and store them in
``bobkit/rehearsal/shipped_profiles.json``, so `bob plan` and its tests need no counting on a fresh machine.

Run after changing the counting code (bobkit/rehearsal/profiles.py, bobkit/tasks/detector.py), the pinned torch or
timm, or a suite's architectures: ``make profiles`` (``--check`` exits 1 when the file is stale).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITES = ("bob-full", "bob-small", "bob-2026", "demo")


def count_profiles() -> dict[str, dict]:
    """The profiles the shipped suites' plans ask for, counted in a private cache."""
    import os

    with tempfile.TemporaryDirectory() as cache:
        os.environ["BOB_CACHE_DIR"] = cache
        from bobkit.batch.grid import load_grid
        from bobkit.rehearsal import profiles
        from bobkit.rehearsal.plan import plan_grid
        from bobkit.rehearsal.throughput import load_table

        profiles.SHIPPED_PROFILES = Path(cache) / "none.json"  # count everything afresh
        for suite in SUITES:
            path = REPO / "params" / f"{suite}.yaml"
            if path.exists():
                plan_grid(load_grid(path), load_table("h100"))
        return json.loads((Path(cache) / "plan" / profiles.PROFILES_FILE).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the shipped file differs from a fresh count")
    args = parser.parse_args(argv)
    counted = count_profiles()
    target = REPO / "bobkit" / "rehearsal" / "shipped_profiles.json"
    text = json.dumps(counted, indent=1, sort_keys=True) + "\n"
    if args.check:
        same = target.exists() and target.read_text() == text
        print(f"{target.relative_to(REPO)}: {'current' if same else 'stale: run python tools/ship_profiles.py'}")
        return 0 if same else 1
    target.write_text(text)
    print(f"wrote {len(counted)} profiles to {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
