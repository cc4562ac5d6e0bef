"""The repository's promises about itself: README commands, CI script, docs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_readme_opens_with_two_commands_and_ci_runs_the_second():
    commands = readme_commands()
    assert len(commands) >= 2
    setup_and_run, setup_and_test = commands[0], commands[1]
    for cmd in (setup_and_run, setup_and_test):
        # Torch is pinned to the CPU wheel and installed only when absent.
        assert cmd.startswith('python -c "import torch" 2>/dev/null || pip install torch==2.13.0;')
    ci_lines = [l for l in (ROOT / ".ci/run").read_text().splitlines() if l and not l.startswith(("#", "set ", "cd "))]
    assert ci_lines == [setup_and_test]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )


def test_docs_custom_encoder_example_runs():
    """The 'Adding your own encoder' code in docs/encoders.md works as printed."""
    import torch

    text = (ROOT / "docs/encoders.md").read_text()
    section = text.split("## Adding your own encoder", 1)[1]
    code = re.search(r"```python\n(.*?)\n```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(code, "docs/encoders.md", "exec"), namespace)
    enc = namespace["enc"]
    x, resets = torch.randn(2, 10, 8), torch.zeros(2, 10, dtype=torch.bool)
    resets[0, 4] = True
    y, state = enc(x, resets)
    steps, s = [], enc.init_state(2)
    for t in range(10):
        y_t, s = enc.step(x[:, t], resets[:, t], s)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-4, atol=1e-5)


def test_gitignore_keeps_benchmark_scratch_out():
    assert "benchmarks/results/" in (ROOT / ".gitignore").read_text()
