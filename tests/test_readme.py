"""The README's promises: its two commands and its example."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    demo, tests = _blocks("bash")[:2]
    assert "landmark-graph demo" in demo and "pytest" in tests
    assert README.index(demo) < README.index("## ")  # before any section
    assert tests.strip() in (ROOT / ".ci" / "run").read_text()


def test_readme_example_runs():
    code = _blocks("python")[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["pred"].shape == (8, 98, 2)
    assert namespace["loss"].ndim == 0


def test_readme_occlusion_example_runs():
    code = _blocks("python")[1]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["visible"].shape == (2, 98) and namespace["scale"].shape == (2, 98, 2)
    assert bool((namespace["scale"] > 0).all())
