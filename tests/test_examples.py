"""The example scripts run as printed (in a shortened form)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_custom_env_example_trains_and_plots(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_env.py"), "--quick", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ, WANDB_MODE="disabled"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    png = re.search(r"learning curves: (\S+)", out.stdout)
    assert png, out.stdout
    assert Path(png.group(1)).resolve() == (run_dir / "curves.png").resolve()
    assert (run_dir / "curves.png").stat().st_size > 0
    assert re.search(r"final evaluation: \d+\.\d\d per trial", out.stdout), out.stdout
