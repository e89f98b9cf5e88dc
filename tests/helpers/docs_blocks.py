"""The shell blocks of README.md and docs/**/*.md, and what the docs test does with each.

Every fenced block whose language is ``bash``, ``sh`` or ``console`` is a command a reader may
copy, so ``tests/test_docs_commands.py`` runs it. How it runs is said by HTML comments on the
lines right before the fence (invisible on the page), one directive each::

    <!-- docs-test: dry-run -->                 every `sage-bench` command that has --dry-run gets it
    <!-- docs-test: append steps=20 -->         words appended to every `sage-bench` command
    <!-- docs-test: replace /shared/data => data -->   text replaced in the block before it runs
    <!-- docs-test: parse-only needs the data sets -->  only parsed by sage-bench's argument parser
    <!-- docs-test: skip installs packages -->   not run at all; the reason is required and reported

and, before a block of any language, ``<!-- docs-test: write my_algos.py -->`` writes the block
into the page's folder (a module a later command imports). Without a directive a block runs as
written. A command the runner cannot run (anything but ``sage-bench``, ``export VAR=value`` and
``VAR=value sage-bench ...``; pipes, ``&&``, ``$(...)``) fails the test unless its block says
``skip`` with a reason, so no block goes unchecked without saying why.

The blocks of one page run in order in one temporary folder, so a page may train a job in one
block and collect it in the next.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL_LANGUAGES = ("bash", "sh", "console")
DIRECTIVES = ("dry-run", "append", "replace", "parse-only", "skip", "write")
# sage-bench subcommands (words after `sage-bench`) that take --dry-run
DRY_RUN_COMMANDS = (("train",), ("sweep", "launch"), ("reproduce", "table1"), ("reproduce", "table2"))

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")


class DocsTestError(ValueError):
    """A block or directive the docs test cannot interpret, with its page and line."""


@dataclass
class Block:
    page: Path  # relative to the repository root
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    directives: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def directive(self, name: str) -> list[str]:
        return [arg for key, arg in self.directives if key == name]


def doc_pages(root: Path = ROOT) -> list[Path]:
    """README.md and every page of docs/, relative to ``root``."""
    pages = [Path("README.md")]
    pages += sorted(p.relative_to(root) for p in (root / "docs").rglob("*.md"))
    return pages


def blocks(page: Path, root: Path = ROOT) -> list[Block]:
    """The fenced blocks of ``page`` with the docs-test directives written right before them."""
    lines = (root / page).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, language = match.groups()
        directives = []
        j = i - 1
        while j >= 0 and _DIRECTIVE.match(lines[j]):
            directives.insert(0, _parse_directive(_DIRECTIVE.match(lines[j]).group(1), page, j + 1))
            j -= 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        found.append(Block(page, i - len(body), language.lower(), "\n".join(body), directives))
        i += 1
    return found


def _parse_directive(text: str, page: Path, line: int) -> tuple[str, str]:
    name, _, arg = text.partition(" ")
    if name not in DIRECTIVES:
        raise DocsTestError(f"{page}:{line}: unknown docs-test directive {name!r}; valid: {', '.join(DIRECTIVES)}")
    arg = arg.strip()
    if name in ("skip", "parse-only", "append", "replace", "write") and not arg:
        raise DocsTestError(f"{page}:{line}: docs-test: {name} needs an argument (skip and parse-only: the reason)")
    if name == "replace" and " => " not in arg:
        raise DocsTestError(f"{page}:{line}: docs-test: replace takes 'OLD => NEW'")
    return name, arg


@dataclass
class Command:
    line: int  # 1-based line in the page
    words: list[str]  # after the leading VAR=value words
    env: dict[str, str]  # leading VAR=value words
    text: str  # as the page writes it (continuations joined)

    @property
    def is_sage_bench(self) -> bool:
        return bool(self.words) and self.words[0] == "sage-bench"

    @property
    def is_export(self) -> bool:
        return bool(self.words) and self.words[0] == "export"


_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SHELL_CONSTRUCTS = ("&&", "||", "|", ";", "$(", "`", ">", "<")


def commands(block: Block) -> list[Command]:
    """The block's commands, after its ``replace`` directives and with its ``append`` and
    ``dry-run`` directives applied to each ``sage-bench`` command."""
    text = block.text
    for arg in block.directive("replace"):
        old, new = arg.split(" => ", 1)
        if old not in text:
            raise DocsTestError(f"{block.where}: docs-test: replace {old!r}: not in the block")
        text = text.replace(old, new)
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, raw in enumerate(text.split("\n")):
        if block.language == "console":
            if not pending:
                if not raw.startswith("$ "):
                    continue  # output, not a command
                raw = raw[2:]
        if not pending:
            start = block.line + 1 + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical.append((start, pending + raw))
        pending = ""
    found = []
    for line, source in logical:
        words = shlex.split(source, comments=True)
        if not words:
            continue
        for word in words:
            if word in _SHELL_CONSTRUCTS or word.startswith(("$(", "`")) or "$(" in word:
                raise DocsTestError(
                    f"{block.page}:{line}: `{source.strip()}` uses the shell ({word!r}), which the docs "
                    "test does not interpret: split the block or mark it docs-test: skip REASON"
                )
        env = {}
        while words and _ASSIGNMENT.match(words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        command = Command(line, words, env, source.strip())
        if command.is_sage_bench:
            if block.directive("dry-run") and any(
                tuple(words[1 : 1 + len(c)]) == c for c in DRY_RUN_COMMANDS
            ):
                command.words = [*command.words, "--dry-run"]
            for arg in block.directive("append"):
                command.words = [*command.words, *shlex.split(arg)]
        found.append(command)
    return found


def shell_blocks(page: Path, root: Path = ROOT) -> list[Block]:
    return [b for b in blocks(page, root) if b.language in SHELL_LANGUAGES]
