"""Every shell command in README.md and docs/ runs, so a renamed option, key or command fails
here instead of in a reader's terminal.

``tests/helpers/docs_blocks.py`` extracts the ``bash``/``sh``/``console`` blocks and reads the
``<!-- docs-test: ... -->`` directives before them (``dry-run``, ``append``, ``replace``,
``parse-only``, ``skip``, ``write``). The blocks of a page run in order in one temporary folder,
``sage-bench`` commands in this process (``VAR=value sage-bench ...`` in a subprocess with that
environment). A failure names the page, the line and the command, with its output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from tests.helpers.docs_blocks import ROOT, DocsTestError, blocks, commands, doc_pages, shell_blocks

PAGES = doc_pages()


def _skipped_blocks() -> list:
    return [
        pytest.param(block, id=f"{block.where}")
        for page in PAGES
        for block in shell_blocks(page)
        if block.directive("skip")
    ]


def test_every_shell_block_runs_or_says_why_not():
    """A block runs as written, under a directive, or is skipped with its reason; a command the
    runner cannot run (not ``sage-bench``) must sit in a skipped block."""
    problems = []
    count = 0
    for page in PAGES:
        try:
            page_blocks = shell_blocks(page)
        except DocsTestError as exc:
            problems.append(str(exc))
            continue
        for block in page_blocks:
            count += 1
            if block.directive("skip"):
                continue
            try:
                found = commands(block)
            except DocsTestError as exc:
                problems.append(str(exc))
                continue
            if not found:
                problems.append(f"{block.where}: a shell block without a command")
            for command in found:
                if not (command.is_sage_bench or command.is_export):
                    problems.append(
                        f"{block.page}:{command.line}: `{command.text}`: the docs test runs only "
                        "`sage-bench` commands; mark the block <!-- docs-test: skip REASON -->"
                    )
    assert not problems, "\n".join(problems)
    assert count >= 30, f"only {count} shell blocks found: is the extraction broken?"


def test_the_extraction_reads_directives_and_continuations(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n"
        "<!-- docs-test: dry-run -->\n"
        "<!-- docs-test: append steps=5 -->\n"
        "```bash\n"
        "sage-bench train dataset=PACS \\\n"
        "    algorithm=ERM   # a comment\n"
        "PYTHONPATH=. sage-bench sweep launch --output-dir s\n"
        "```\n"
        "```console\n"
        "$ sage-bench collect runs/\n"
        "some output\n"
        "```\n"
        "<!-- docs-test: skip needs a cluster -->\n"
        "```sh\n"
        "sbatch x | y\n"
        "```\n"
        "<!-- docs-test: frobnicate -->\n"
        "```bash\n"
        "```\n"
    )
    with pytest.raises(DocsTestError, match=r"page.md:17: unknown docs-test directive 'frobnicate'"):
        blocks(Path("page.md"), root=tmp_path)
    page.write_text(page.read_text().replace("<!-- docs-test: frobnicate -->\n", ""))
    first, second, third, _ = blocks(Path("page.md"), root=tmp_path)
    train, sweep = commands(first)
    assert (train.line, train.words) == (5, ["sage-bench", "train", "dataset=PACS", "algorithm=ERM", "--dry-run", "steps=5"])
    assert sweep.env == {"PYTHONPATH": "."} and sweep.words[-2:] == ["--dry-run", "steps=5"]
    [collect] = commands(second)
    assert (collect.line, collect.words) == (10, ["sage-bench", "collect", "runs/"])
    assert third.directive("skip") == ["needs a cluster"]
    with pytest.raises(DocsTestError, match=r"page.md:15: .*uses the shell"):
        commands(third)


@pytest.mark.parametrize("block", _skipped_blocks())
def test_skipped_blocks_say_why(block):
    """Not a check: lists every block the docs test does not run, with its reason, among the
    skips of pytest's summary."""
    pytest.skip(f"{block.where}: {'; '.join(block.directive('skip'))}")


def _run_in_process(words: list[str]) -> int:
    from sage_bench.cli import main

    try:
        return main(words[1:])
    except SystemExit as exc:  # argparse's errors
        return exc.code if isinstance(exc.code, int) else 1


def _parse_only(words: list[str]) -> int:
    from sage_bench.cli import build_parser

    try:
        args, extra = build_parser().parse_known_args(words[1:])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    # as sage_bench.cli.main: words left over are key=value overrides where the subcommand takes them
    if extra and (not getattr(args, "overrides_anywhere", False) or any(e.startswith("-") for e in extra)):
        print(f"sage-bench: error: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
        return 2
    return 0


def _run_in_subprocess(words: list[str], env: dict[str, str]) -> tuple[int, str]:
    environ = dict(os.environ)
    for key, value in env.items():
        # keep this checkout importable behind the page's own PYTHONPATH
        environ[key] = os.pathsep.join([value, environ[key]]) if key == "PYTHONPATH" and key in environ else value
    done = subprocess.run(
        [sys.executable, "-m", "sage_bench.cli", *words[1:]],
        env=environ, capture_output=True, text=True, timeout=600,
    )
    return done.returncode, done.stdout + done.stderr


PAGES_WITH_COMMANDS = [
    page for page in PAGES if any(not b.directive("skip") for b in shell_blocks(page))
]


class CommandFailed(AssertionError):
    """A command of a page exited non-zero; the message names the page, line and command."""


def run_page(page: Path, root: Path, workdir: Path, monkeypatch, capfd) -> None:
    """Run the shell blocks of ``page`` in order in ``workdir``, as its directives say; raise
    ``CommandFailed`` at the first command that exits non-zero."""
    monkeypatch.chdir(workdir)
    for key in ("SAGE_BENCH_DATA", "SAGE_BENCH_CACHE_DIR"):
        monkeypatch.delenv(key, raising=False)
    for block in blocks(page, root):
        for name in block.directive("write"):
            (workdir / name).write_text(block.text + "\n")
        if block.language not in ("bash", "sh", "console") or block.directive("skip"):
            continue
        parse_only = bool(block.directive("parse-only"))
        for command in commands(block):
            if command.is_export:
                for word in command.words[1:]:
                    key, _, value = word.partition("=")
                    monkeypatch.setenv(key, value)
                continue
            capfd.readouterr()
            output = ""
            try:
                if parse_only:
                    code = _parse_only(command.words)
                elif command.env:
                    code, output = _run_in_subprocess(command.words, command.env)
                else:
                    code = _run_in_process(command.words)
            except Exception:
                code, output = "an exception", traceback.format_exc()
            captured = capfd.readouterr()
            if code != 0:
                shown = " ".join(command.words)
                tail = "\n".join((captured.out + captured.err + output).splitlines()[-40:])
                raise CommandFailed(
                    f"{page}:{command.line}: `{command.text}` (run as `{shown}`"
                    f"{', parsed only' if parse_only else ''}) exited with {code}:\n{tail}"
                )


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=str)
def test_the_commands_of_a_page_run(page, tmp_path, monkeypatch, capfd):
    try:
        run_page(page, ROOT, tmp_path, monkeypatch, capfd)
    except CommandFailed as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.mark.slow
def test_a_failing_command_is_reported_with_its_page_and_line(tmp_path, monkeypatch, capfd):
    """A renamed key or option fails the docs test, which names the page, line and command."""
    (tmp_path / "docs").mkdir()
    page = Path("docs/page.md")
    (tmp_path / page).write_text(
        "# A page\n\n"
        "<!-- docs-test: dry-run -->\n"
        "```bash\n"
        "sage-bench train dataset=RotatedDigits algorithm=ERM test_envs=[0]\n"
        "sage-bench train dataset=RotatedDigits algorithm=ERM test_env=[0]   # renamed key\n"
        "```\n"
        "<!-- docs-test: parse-only an option that does not exist -->\n"
        "```bash\n"
        "sage-bench collect runs/ --no-such-option\n"
        "```\n"
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(CommandFailed, match=r"docs/page.md:6: `sage-bench train .*test_env=\[0\].* exited with 2") as failed:
        run_page(page, tmp_path, workdir, monkeypatch, capfd)
    assert "test_env" in str(failed.value)  # the command's own message comes along
    (tmp_path / page).write_text((tmp_path / page).read_text().replace("test_env=[0]   # renamed key", "test_envs=[1]"))
    with pytest.raises(CommandFailed, match=r"docs/page.md:10: .*--no-such-option.*parsed only\) exited with 2"):
        run_page(page, tmp_path, workdir, monkeypatch, capfd)


def test_the_readme_is_a_front_door():
    """The README stays short and points into the docs."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "docs/" in readme
