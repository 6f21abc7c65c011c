"""tools/check_skips.py: CI fails on any skipped test that is not GPU-only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bobkit.utils.paths import repo_root

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3" skipped="{n}">
<testcase classname="tests.test_a" name="test_runs"/>
<testcase classname="tests.test_a" name="test_gpu"><skipped type="pytest.skip" message="needs a CUDA GPU"/></testcase>
{extra}
</testsuite></testsuites>
"""


def _check(tmp_path: Path, extra: str, n: int) -> subprocess.CompletedProcess[str]:
    report = tmp_path / "junit.xml"
    report.write_text(JUNIT.format(extra=extra, n=n))
    return subprocess.run([sys.executable, str(repo_root() / "tools" / "check_skips.py"), str(report)],
                          capture_output=True, text=True, check=False)


def test_gpu_only_skips_pass(tmp_path: Path) -> None:
    result = _check(tmp_path, "", 1)
    assert result.returncode == 0, result.stderr


def test_other_skips_fail_naming_the_test(tmp_path: Path) -> None:
    extra = ('<testcase classname="tests.test_b" name="test_tables">'
             '<skipped type="pytest.skip" message="the public data folder is not present"/></testcase>')
    result = _check(tmp_path, extra, 2)
    assert result.returncode == 1
    assert "tests.test_b::test_tables" in result.stderr and "public data folder" in result.stderr
