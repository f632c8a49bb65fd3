"""The README as the site's home page, and links from the docs to the rest of the repository.

The Markdown is written for GitHub, where relative links work across the whole repository: the
README links into docs/ (`docs/configuration.md`) and pages link to files beside the code
(`../bench/RESULTS.md`, `../deploy/nginx.conf`). mkdocs knows only docs/ and, with --strict,
fails on both. This hook keeps the sources as GitHub reads them and gives the site its own links:

- the home page is README.md itself (not a second overview to keep in step), its `docs/...` links
  made relative to docs/, where mkdocs checks them as it checks every page's;
- a link to a repository file outside docs/ must name a file that exists, else the build fails;
  it becomes a link into the repository when `repo_url` is set in mkdocs.yml, otherwise (the site
  is built from a checkout, and published with none) the file's path, as code.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
HOME = "index.md"
log = logging.getLogger("mkdocs.hooks.repo_files")  # under "mkdocs": --strict counts its warnings

FENCE = re.compile(r"^(```|~~~)", re.M)
# [text](target) and ![alt](target); the text may hold `code`, the target no space or parenthesis.
LINK = re.compile(r"(!?)\[((?:[^\[\]`]|`[^`]*`)*)\]\(([^()\s]+)\)")


def on_files(files: Files, config: Any, **_: Any) -> Files:
    files.append(File.generated(config, HOME, abs_src_path=str(REPO / "README.md")))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, **_: Any) -> str:
    source = "README.md" if page.file.src_uri == HOME else "docs/" + page.file.src_uri
    # Fenced code is left alone: a `](` there is code, not a link.
    parts = re.split(r"(^(?:```|~~~)[^\n]*\n.*?^(?:```|~~~)[ \t]*$)", markdown, flags=re.M | re.S)
    return "".join(part if FENCE.match(part) else
                   LINK.sub(lambda m: _link(m, source, page.file.src_uri, config), part)
                   for part in parts)


def _link(match: re.Match[str], source: str, src_uri: str, config: Any) -> str:
    image, text, target = match.groups()
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
        return match.group(0)
    path, _, anchor = target.partition("#")
    in_repo = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
    if in_repo == "README.md":
        in_repo = "docs/" + HOME  # the README is the home page
    if in_repo.startswith("docs/"):
        if source.startswith("docs/") and in_repo != "docs/" + HOME:
            return match.group(0)  # a page to a page: mkdocs's own to check
        relative = posixpath.relpath(in_repo, posixpath.dirname("docs/" + src_uri))
        return f"{image}[{text}]({relative}{'#' + anchor if anchor else ''})"
    if in_repo.startswith("../") or not (REPO / in_repo).exists():
        log.warning("%s links to %s, which is not in the repository", source, target)
        return match.group(0)
    if image:
        log.warning("%s shows the image %s from outside docs/, which the site does not hold", source, target)
        return match.group(0)
    if config.repo_url:
        kind = "tree" if (REPO / in_repo).is_dir() else "blob"
        url = f"{config.repo_url.rstrip('/')}/{kind}/HEAD/{in_repo}{'#' + anchor if anchor else ''}"
        return f"[{text}]({url})"
    return text if in_repo in text else f"{text} (`{in_repo}`)"
