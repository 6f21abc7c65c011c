"""Fail when a pytest JUnit report holds a skipped test that is not GPU-only (CI's rule: 0 skips on a CPU machine).

Usage: ``python tools/check_skips.py junit.xml``. A skip counts as GPU-only when its reason mentions a GPU or CUDA.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET

GPU_ONLY = re.compile(r"\b(gpu|cuda)\b", re.IGNORECASE)


def non_gpu_skips(junit_path: str) -> list[str]:
    """``test id: reason`` for every skipped test case whose reason does not name a GPU."""
    bad = []
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        for skipped in case.findall("skipped"):
            reason = skipped.get("message", "") or (skipped.text or "")
            if not GPU_ONLY.search(reason):
                bad.append(f"{case.get('classname')}::{case.get('name')}: {reason}")
    return bad


def main(argv: list[str]) -> int:
    bad = non_gpu_skips(argv[0])
    for line in bad:
        print(f"skipped (not GPU-only): {line}", file=sys.stderr)
    if bad:
        print(f"check_skips: {len(bad)} non-GPU skip(s); a bare clone must run every test", file=sys.stderr)
        return 1
    print("check_skips: no skips other than GPU-only ones")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
