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


def _package_imports():
    """{module: the amago2 modules it imports}, from every import statement (module-level and
    inside functions), with `from pkg import name` counted as importing pkg.name when that is a
    module and pkg otherwise."""
    import ast

    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "amago2").rglob("*.py")}  # fmt: skip
    graph = {}
    for name, path in files.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for a in node.names:
                    deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def test_the_package_has_no_import_cycles():
    graph = _package_imports()
    # A package's __init__ importing its own submodules is how it re-exports them; only
    # submodule -> submodule edges can form a cycle that matters.
    graph = {m: {d for d in deps if not (m.startswith(d + ".") and d in graph)} for m, deps in graph.items()}
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_modules_are_short_or_say_why():
    """About 450 lines at most, unless the module's docstring says why it is longer."""
    import ast

    long = []
    for path in sorted((ROOT / "amago2").rglob("*.py")):
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > 450 and "longer" not in doc:
            long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not long, long
