"""The configuration page's tables, generated from `Settings` when the site is built.

`docs/configuration.md` holds the prose and, between two HTML comments, a sentence for readers of
the Markdown source (GitHub shows no build). The build replaces that with one table per group of
`service/flowise_sse/settings.py`, so the page lists every setting with the default and the
docstring the code has, and cannot drift from it.

- A row per field, in the file's order, grouped under its `# --- Title ---` comment.
- A field's docstring is the string right after it. Fields written one after another with a single
  docstring after the last (`flowise_username`, `flowise_password`) share one row.
- The variable is the field's own alias where it has one (upstream settings keep Flowise's names,
  `FLOWISE_URL`), else `env_prefix` + the field name in capitals.

settings.py is loaded from this checkout's file, not imported from the installed package: a venv
that holds a non-editable, older install would otherwise document that one.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from pydantic import AliasChoices, SecretStr

REPO = Path(__file__).resolve().parents[2]
SETTINGS_FILE = REPO / "service" / "flowise_sse" / "settings.py"
PAGE = "configuration.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"
GROUP = re.compile(r"^\s*# --- (.+?) -+\s*$")


def load_settings(path: Path = SETTINGS_FILE) -> type:
    # A name of its own so that it never stands in for the installed `flowise_sse.settings`;
    # in sys.modules while it runs, where pydantic resolves the module's postponed annotations.
    name = "_flowise_sse_settings_for_docs"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module.Settings


def documented_fields(source: str, class_name: str = "Settings") -> list[tuple[str, str, str | None]]:
    """(group, field, docstring or None) for each annotated field of the class, in order."""
    lines = source.splitlines()
    groups = [(number, m.group(1)) for number, line in enumerate(lines, 1) if (m := GROUP.match(line))]
    cls = next(node for node in ast.parse(source).body
               if isinstance(node, ast.ClassDef) and node.name == class_name)
    fields = []
    for statement, following in zip(cls.body, cls.body[1:] + [None]):
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        doc = None
        if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            doc = following.value.value
        group = next((title for number, title in reversed(groups) if number < statement.lineno), "Settings")
        fields.append((group, statement.target.id, doc))
    return fields


def env_name(settings: type, field: str) -> str:
    alias = settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if isinstance(alias, str):
        return alias
    return settings.model_config.get("env_prefix", "") + field.upper()


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor and value % factor == 0:
            return f"{value // factor} {unit}"
    return ""


def default_text(field: str, value: Any) -> str:
    if value is None or value == []:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`" + ",".join(str(v) for v in value) + "`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, int) and field.endswith("_bytes") and _size(value):
        return f"`{value}` ({_size(value)})"
    return f"`{value}`"


def type_text(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return type_text(args[0])
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is typing.Literal:
        names = [f"`{a}`" for a in args]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if origin is list:
        return "comma-separated list"
    return {bool: "`true` or `false`", int: "integer", float: "number", str: "string",
            SecretStr: "secret"}.get(annotation, str(annotation))


def _one_line(doc: str) -> str:
    return " ".join(doc.split()).replace("|", "\\|")


def render(settings: type, source: str) -> str:
    fields = documented_fields(source)
    declared = [name for _, name, _ in fields]
    if declared != list(settings.model_fields):
        raise PluginError(f"settings page: the fields parsed from settings.py {declared} are not "
                          f"Settings.model_fields {list(settings.model_fields)}")
    out: list[str] = []
    group_now = None
    waiting: list[str] = []  # fields with no docstring of their own: they share the next one's
    for group, name, doc in fields:
        waiting.append(name)
        if doc is None:
            continue
        if group != group_now:
            out += ["", f"## {group}", "", "| variable | default | type | meaning |", "|---|---|---|---|"]
            group_now = group
        infos = [settings.model_fields[n] for n in waiting]
        variables = ", ".join(f"`{env_name(settings, n)}`" for n in waiting)
        defaults = list(dict.fromkeys(default_text(n, i.default) for n, i in zip(waiting, infos)))
        kinds = list(dict.fromkeys(type_text(i.annotation) for i in infos))
        out.append(f"| {variables} | {', '.join(defaults)} | {', '.join(kinds)} | {_one_line(doc)} |")
        waiting = []
    if waiting:
        raise PluginError(f"settings page: {', '.join(waiting)} in settings.py has no docstring")
    return "\n".join(out).lstrip("\n") + "\n"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if START not in markdown or END not in markdown:
        raise PluginError(f"{PAGE} has lost its {START} ... {END} markers: the settings tables go there")
    before, rest = markdown.split(START, 1)
    _, after = rest.split(END, 1)
    return before + render(load_settings(), SETTINGS_FILE.read_text()) + after
