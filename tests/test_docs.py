"""The README, the user guide in docs/ and the model card stay short, linked and true to the command line: every
relative link resolves, the card's front matter is valid Hub metadata, and every fenced `diffiml ...` command
parses with the options it names (run with --help, so a renamed or removed option fails here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from huggingface_hub import metadata_load
from typer.testing import CliRunner

from diffiml_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
README, CARD = ROOT / "README.md", ROOT / "weights" / "README.md"
PAGES = [README, CARD, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def test_the_readme_and_the_model_card_stay_short():
    assert len(README.read_text().splitlines()) <= 160
    assert len(CARD.read_text().splitlines()) <= 170


def test_the_model_card_has_hub_front_matter():
    metadata = metadata_load(CARD)
    assert metadata["license"] == "apache-2.0" and metadata["library_name"] == "diffiml"
    assert {"image-forensics", "image-manipulation-localization"} <= set(metadata["tags"])
    assert {"f1", "roc_auc"} <= set(metadata["metrics"]) and metadata["datasets"]
    text = CARD.read_text()
    for section in ("## Model details", "## Intended use", "## Training data", "## Evaluation",
                    "## Limitations and risks", "## How to use", "## Citation"):
        assert section in text


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https: and mailto: links are not checked offline
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in _anchors(resolved), f"{page.name}: {target}"


def _commands(page: Path) -> list[list[str]]:
    """The `diffiml ...` (and `torchrun ... -m diffiml_cli ...`) commands of a page's fenced blocks, with
    continuations joined, and environment assignments, comments, `...` and the brackets of optional parts dropped."""
    commands = []
    for block in FENCE.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            words = [word.strip("[]") for word in shlex.split(line, comments=True)]
            words = [word for word in words if word and word != "..."]
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)
            if words[:1] == ["diffiml"]:
                commands.append(words[1:])
            elif "diffiml_cli" in words and words[words.index("diffiml_cli") - 1] == "-m":  # torchrun -m diffiml_cli
                commands.append(words[words.index("diffiml_cli") + 1:])
    return commands


COMMANDS = [(page, command) for page in PAGES for command in _commands(page)]


def test_the_pages_show_commands():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize(("page", "command"), COMMANDS,
                         ids=[f"{page.name}: {' '.join(command)[:60]}" for page, command in COMMANDS])
def test_every_command_shown_parses(page, command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, f"{page.name}: diffiml {' '.join(command)}\n{result.output}"


GUIDE = ("localize", "large-jobs", "report", "evaluate", "calibrate", "train", "speed", "checkpoints", "reliability")


@pytest.mark.parametrize("name", GUIDE)
def test_each_guide_page_starts_with_the_command_a_user_types(name):
    text = (ROOT / "docs" / f"{name}.md").read_text()
    title, _, rest = text.partition("\n\n")
    assert title.startswith("# ") and rest.startswith("```"), name
    assert "diffiml " in FENCE.search(rest).group(1), name


def test_the_exit_code_rules_keep_their_heading():
    assert "## Exit codes and bad input" in (ROOT / "docs" / "large-jobs.md").read_text()
