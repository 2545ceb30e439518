"""The README's Python example runs as written, and its claims hold."""

from __future__ import annotations

import re

import torch

from tests.conftest import REPO_ROOT


def test_readme_example_runs():
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 16
    default = torch.get_default_dtype()
    try:
        exec(compile(block, "README.md", "exec"), {})
    finally:
        torch.set_default_dtype(default)


def test_readme_quick_start_is_the_two_commands():
    text = (REPO_ROOT / "README.md").read_text()
    quick_start = text.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make \w+", quick_start, re.M)
    assert commands == ["make train", "make test"]
