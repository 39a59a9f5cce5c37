"""Every ```python and ```sh snippet of README.md runs as written (in a temporary directory).

The Python snippets run in order in one namespace, as a reader pastes them into one session.
The CLI quickstart runs line by line through `python -m torchshrink`. The set-up block (`make
demo`, `make test`) is what CI itself runs, so it is not run again from inside the suite.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def cli_lines() -> list[list[str]]:
    quickstart = next(b for b in blocks("sh") if "torchshrink train" in b)
    joined = quickstart.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            assert words[0] == "torchshrink", line
            out.append(words[1:])
    return out


def test_readme_has_the_snippets_this_test_runs() -> None:
    assert len(blocks("python")) >= 3
    assert [w[0] for w in cli_lines()][:2] == ["inspect", "train"]
    assert all(b.startswith(("make ", "export ")) or "torchshrink" in b for b in blocks("sh"))


@pytest.mark.slow
def test_python_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for i, code in enumerate(blocks("python")):
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
    before, after = namespace["before"], namespace["after"]
    # the quickstart keeps its accuracy: within 1 point of the unpruned model
    assert after.metric >= before.metric - 1.0  # type: ignore[attr-defined]
    assert (tmp_path / "lenet300_pruned.tsz").is_file() and (tmp_path / "plan.png").is_file()


@pytest.mark.slow
def test_cli_quickstart_runs(tmp_path: Path) -> None:
    # cwd is a temporary directory: a relative PYTHONPATH (src) would resolve there, so the
    # child imports this checkout's package by absolute path
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    for args in cli_lines():
        proc = subprocess.run([sys.executable, "-m", "torchshrink", *args, *(["--quiet"] if args[0] in (
            "train", "compress", "plan", "demo") else [])], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=3600)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
    assert (tmp_path / "lenet300_dc.tsz").is_file() and (tmp_path / "best.tsz").is_file()


def test_sh_environment_snippet_runs() -> None:
    env_block = next(b for b in blocks("sh") if b.startswith("export "))
    proc = subprocess.run(["bash", "-c", env_block + 'echo "$MALLOC_MMAP_THRESHOLD_"'], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "4000000000"
