"""The README against the code: its lists (presets, tasks, methods, config sections) are the code's, and
every relative link and anchor of every tracked Markdown file resolves in a clone. The help's lists are
generated from the same places (sirl.cli), so both are checked against the code here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sirl.cli import build_parsers, config_sections, method_names, method_sections, preset_names, task_names

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TASKS_GUIDE = (ROOT / "docs" / "guides" / "tasks.md").read_text()
CONFIGURATION_GUIDE = (ROOT / "docs" / "guides" / "configuration.md").read_text()
README_MOST_LINES = 250
"""The README is a front door: what sirl is, its status, install, quick starts, commands, links; the rest is
in docs/."""

def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def readme_line(starting: str) -> str:
    [line] = [line for line in README.splitlines() if line.startswith(starting)]
    return line


def test_readme_lists_the_presets_of_configs():
    row = readme_line("| `--config PRESET` |")
    listed = [name for name in backticked(row.split("|")[2]) if "/" not in name]
    assert listed == preset_names() == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))


def test_readme_lists_the_registered_tasks():
    row = readme_line("| `--task NAME_OR_IMPORT_PATH` |")
    listed = [name for name in backticked(row.split("|")[2]) if ":" not in name]
    assert listed == task_names()
    table = TASKS_GUIDE.split("\n## Tasks\n", 1)[1].split("\n## ", 1)[0]
    assert [backticked(line)[0] for line in table.splitlines() if line.startswith("| `")] == task_names()


def test_the_readme_is_a_front_door_that_reaches_every_guide_in_one_click():
    assert len(README.splitlines()) <= README_MOST_LINES
    guides = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert guides and [g for g in guides if f"]({g})" not in README] == []


def test_readme_lists_the_methods():
    line = readme_line("- `sirl train --algo ")
    methods = re.match(r"- `sirl train --algo ([\w|]+)`", line).group(1).split("|")
    assert methods[0] == "si" and sorted(methods) == sorted(method_names())


def test_readme_lists_the_config_sections_of_the_dataclasses():
    section = CONFIGURATION_GUIDE.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    sections, top_level = config_sections()
    assert [backticked(row)[0] for row in rows] == sections + top_level
    assert sections[:3] == ["task", "verifier", "model"] and "method" in sections
    # the method row names each method's section, method.<name> (sirl.methods.settings), in the code's order
    [method_row] = [row for row in rows if backticked(row)[0] == "method"]
    assert [name for name in backticked(method_row) if name.startswith("method.")] == [f"method.{m}" for m in method_sections()]


def test_the_help_lists_come_from_the_code():
    commands = build_parsers().commands
    train_help = commands["train"].format_help().replace("\n", " ")
    train_help = re.sub(r"\s+", " ", train_help)
    for name in preset_names() + task_names() + method_names():
        assert name in train_help, name
    sections, top_level = config_sections()
    assert f"Sections: {', '.join(sections)}; top-level fields: {', '.join(top_level)}." in train_help
    assert f"Each method's settings are a section of method: {', '.join(f'method.{m}' for m in method_sections())} " in train_help


# --- links -------------------------------------------------------------------------------------------


def tracked_files() -> set[str]:
    """The files a clone has: git's index where this is a checkout, else what is on disk."""
    if shutil.which("git") and (ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return {path for path in listed.split("\0") if path}
    return {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts}


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lowercased text without markup and punctuation (word
    characters, spaces and hyphens stay), spaces turned into hyphens, repeats numbered -1, -2, ..."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", strip_code(markdown), re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def strip_code(markdown: str) -> str:
    """Without fenced code blocks, whose brackets and '#' lines are not links or headings."""
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


def relative_links(markdown: str) -> list[str]:
    """Targets of inline links and images that point into the repository (not URLs, not mail)."""
    text = re.sub(r"`[^`\n]*`", "", strip_code(markdown))  # inline code is not a link either
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def broken_links(files: set[str]) -> list[str]:
    """Every relative link of the Markdown files among ``files`` whose target is not one of ``files`` (or a
    folder of them) on disk, or whose anchor is not a heading of its target. No target is exempt."""
    files = {path for path in files if (ROOT / path).is_file()}  # tracked but deleted is gone from a clone too
    folders = {str(parent) for path in files for parent in Path(path).parents if str(parent) != "."}
    broken = []
    for document in sorted(p for p in files if p.endswith(".md")):
        text = (ROOT / document).read_text()
        for target in relative_links(text):
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(Path(document).parent / path) if path else document
            if resolved not in files and resolved not in folders:
                broken.append(f"{document}: {target} (no {resolved} in the repository)")
            elif anchor and resolved.endswith(".md") and anchor not in github_anchors((ROOT / resolved).read_text()):
                broken.append(f"{document}: {target} (no heading #{anchor} in {resolved})")
    return broken


def test_every_relative_link_and_anchor_in_the_markdown_resolves():
    assert broken_links(tracked_files()) == []


def test_the_link_checker_finds_broken_paths_and_anchors(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Top\n## The method (`--algo si`)\n## Top\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md#the-method---algo-si) [ok](docs/a.md#top-1) [ok](#x) [web](https://example.com)\n"
        "[gone](../shared/METHOD.md) [anchor](docs/a.md#nope) `[code](not/a/link.md)`\n"
        "```\n[fenced](nowhere.md)\n```\n# x\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert broken_links({"README.md", "docs/a.md"}) == [
        "README.md: ../shared/METHOD.md (no ../shared/METHOD.md in the repository)",
        "README.md: docs/a.md#nope (no heading #nope in docs/a.md)",
    ]


def test_the_method_document_is_in_the_repository_and_linked_from_the_readme():
    assert "](docs/method.md)" in README and "../shared/" not in README
    assert "docs/method.md" in tracked_files() and (ROOT / "docs" / "method.md").is_file()
    assert "docs/method.md" not in " ".join(broken_links(tracked_files()))


# --- packaging ---------------------------------------------------------------------------------------


def test_the_license_is_an_spdx_expression():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # PEP 639; a table here is deprecated by setuptools
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    [setuptools] = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools == "setuptools>=77"  # the first setuptools that reads an SPDX license string
