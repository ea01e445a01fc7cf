"""Every code block of the README runs as pasted, and shows what it prints."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [code for lang, code in BLOCKS if lang == "bash"]


def test_readme_is_a_landing_page():
    lines = README.splitlines()
    assert len(lines) <= 450
    assert lines.index("## The command line") < 120
    assert lines.index("## The command line") < lines.index("## Python quick start")
    assert "../shared" not in README and "METHOD.md" not in README
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)", README):
        assert (REPO / target).is_file(), target


def test_first_block_sets_up_and_fits_the_sample_then_tests():
    setup, tests = BASH[0].strip().splitlines()
    venv = "python3 -m venv .venv && .venv/bin/pip install -q . && "
    assert setup == venv + ".venv/bin/sklearn-beta fit data/traces/sample.csv"
    assert tests.startswith("python3 -m venv .venv") and "pytest" in tests


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """A directory with the repository's data and an ``sklearn-beta`` on PATH."""
    root = tmp_path_factory.mktemp("readme")
    (root / "data").symlink_to(REPO / "data")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sklearn-beta"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m sklearn_beta.cli "$@"\n')
    script.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"

    def run(line: str) -> str:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
            check=False,
        )
        assert done.returncode == 0, (line, done.stderr)
        return done.stdout

    return run


def _rounding(text: str) -> str:
    return re.sub(r"\b\d\.\d+e-(1[3-9]|[2-9]\d)\b", "<rounding>", text)


def test_command_line_blocks_run_and_print_what_the_readme_shows(shell):
    # The first line's command, without the set-up CI cannot do offline.
    first = BASH[0].strip().splitlines()[0].rpartition("&& .venv/bin/")[2]
    shown = re.search(
        r"```bash\n" + re.escape(first) + r"\n```\n\n```text\n(.*?)```", README, re.S
    )
    assert shown is not None
    # A noise-free trace fits to rounding: an rmse of 1e-15 s moves with any
    # change in the order of float operations, and is not what is shown.
    assert _rounding(shell(first)) == _rounding(shown.group(1))
    commands = [line for block in BASH[1:] for line in block.strip().splitlines()]
    assert len(commands) >= 5
    for line in commands:
        assert shlex.split(line)[0] == "sklearn-beta", line
        shell(line)


def test_python_blocks_run_in_order(capsys):
    namespace: dict = {}
    for i, code in enumerate(PYTHON):
        exec(compile(code, f"README python block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "{'estimator__phaseexposuretransformer__chunk_size': 64}" in out
    assert "[4000.0, 30.0, 200.0]" in out
    assert "256 None" in out and "(3, 2)" in out
    assert "[5.e-03 2.e-05 1.e-04]" in out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cross_validation_doc_blocks_run_in_order(capsys):
    text = (REPO / "docs" / "cross_validation.md").read_text()
    namespace: dict = {}
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
        exec(compile(code, f"docs/cross_validation.md block {i}", "exec"), namespace)
    assert "{'phaseexposuretransformer__chunk_size': 256}" in capsys.readouterr().out
