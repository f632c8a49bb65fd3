"""The documentation: the site builds strictly, the configuration page lists every setting the code
has, and the Markdown reads right on GitHub too (the README's links, the anchors between pages)."""

from __future__ import annotations

import ast
import html
import os
import pathlib
import re
import subprocess
import sys

import pytest
from pydantic import AliasChoices

from flowise_sse.settings import Settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
LINK = re.compile(r"!?\[(?:[^\[\]`]|`[^`]*`)*\]\(([^()\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.M | re.S)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's notice, not a build problem
    )
    assert build.returncode == 0, build.stderr[-4000:]
    return out


def _env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return Settings.model_config["env_prefix"] + field.upper()


def _text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())


def test_docsBuild_strict_thenConfigurationPageHasARowPerSettingWithItsDoc(site):
    page = (site / "configuration.html").read_text()
    rows = [_text(row) for row in re.findall(r"<tr>(.*?)</tr>", page, re.S)]
    docs = _field_docs()
    assert list(docs) == list(Settings.model_fields)
    for field, doc in docs.items():
        name = _env_name(field)
        row = next((r for r in rows if re.search(rf"(^|[ ,]){name}([ ,]|$)", r)), None)
        assert row is not None, f"{name} is not on the configuration page"
        assert " ".join(doc.replace("`", "").split()) in row, field


def _field_docs() -> dict[str, str]:
    """Each field of Settings with the docstring written after it, or after the fields that
    follow it without one of their own (they share it)."""
    tree = ast.parse((ROOT / "service" / "flowise_sse" / "settings.py").read_text())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings").body
    docs: dict[str, str] = {}
    waiting: list[str] = []
    for statement, following in zip(body, body[1:] + [None], strict=True):
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            waiting.append(statement.target.id)
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                docs.update(dict.fromkeys(waiting, str(following.value.value)))
                waiting = []
    assert not waiting, f"no docstring for {waiting}"
    return docs


def test_docsBuild_homeIsTheReadme_andRepositoryLinksArePathsNotBrokenLinks(site):
    home = (site / "index.html").read_text()
    assert "<h1" in home and "flowise-sse" in home
    assert 'href="configuration.html"' in home  # README's docs/configuration.md, made a site link
    assert 'src="chat.png"' in home
    for page in site.rglob("*.html"):
        assert not re.search(r'href="(\.\./)*(bench|deploy|service|tests|openapi)/', page.read_text()), page


def test_docsBuild_whenARepositoryLinkIsBroken_thenStrictBuildFails(tmp_path):
    docs = tmp_path / "docs"
    (docs / "hooks").mkdir(parents=True)
    for hook in ("repo_files.py", "settings_page.py"):
        (docs / "hooks" / hook).write_text((DOCS / "hooks" / hook).read_text())
    (docs / "configuration.md").write_text("# C\n<!-- settings:start -->\n<!-- settings:end -->\n")
    (docs / "page.md").write_text("# P\n\nSee [the results](../bench/NO_SUCH_FILE.md).\n")
    config = ((ROOT / "mkdocs.yml").read_text().split("\nnav:")[0]
              + "\nnav:\n  - index.md\n  - page.md\n  - configuration.md\n")
    (tmp_path / "mkdocs.yml").write_text(config.replace("extra_css:\n  - stylesheets/extra.css\n", ""))
    # The hooks find the repository from their own path: the copies point at tmp_path, whose
    # README and settings.py are linked in from the real checkout.
    (tmp_path / "README.md").write_text("# flowise-sse\n")
    (tmp_path / "service" / "flowise_sse").mkdir(parents=True)
    (tmp_path / "service" / "flowise_sse" / "settings.py").write_text(
        (ROOT / "service" / "flowise_sse" / "settings.py").read_text())
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode != 0
    assert "../bench/NO_SUCH_FILE.md, which is not in the repository" in build.stderr


def test_readme_shortWithTheTwoCommands_andEveryLinkResolves():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for target in LINK.findall(FENCED.sub("", readme)):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        assert (ROOT / target.split("#")[0]).exists(), target


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped, spaces to `-`
    (hyphens are not collapsed, unlike mkdocs's slugs)."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: pathlib.Path) -> set[str]:
    text = FENCED.sub("", page.read_text())
    return {github_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_anchorsBetweenPages_resolveOnGitHubToo(page):
    """mkdocs checks anchors with its own slugs; GitHub's differ in places (`--workers` keeps its
    hyphens), and the pages are read there too."""
    for target in LINK.findall(FENCED.sub("", page.read_text())):
        path, _, anchor = target.partition("#")
        if not anchor or re.match(r"^[a-z]+:", target):
            continue
        linked = (page.parent / path).resolve() if path else page
        assert anchor in _anchors(linked), f"{target}: no such heading in {linked.relative_to(ROOT)}"


def test_docs_noTrackerNumbers():
    for page in [ROOT / "README.md", *PAGES]:
        found = re.findall(r"\b(?:issue|item)s? #?\d+", page.read_text(), re.I)
        assert not found, (page.relative_to(ROOT), found)
