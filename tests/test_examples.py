"""The example scripts run as printed (in a shortened form)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run_example


def test_custom_env_example_trains_and_plots(tmp_path):
    run_dir = tmp_path / "run"
    out = run_example("custom_env.py", run_dir, timeout=300)
    png = re.search(r"learning curves: (\S+)", out.stdout)
    assert png, out.stdout
    assert Path(png.group(1)).resolve() == (run_dir / "curves.png").resolve()
    assert (run_dir / "curves.png").stat().st_size > 0
    assert re.search(r"final evaluation: \d+\.\d\d per trial", out.stdout), out.stdout
