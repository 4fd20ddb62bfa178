"""An agent-computer interface (ACI) in the style of SWE-agent, and a plain shell to compare it with.

Both work on a :class:`Workspace`: one directory that every command is confined to. A path is
resolved (``..`` and symlinks followed) and refused with :class:`OutsideWorkspace` unless its real
location is the workspace root or inside it. Tests run through :func:`course.llm.run_python` (a
subprocess with a time limit, a memory limit and an audit hook that refuses writes outside the
workspace) and are killed at the per-command time limit; the in-process commands that walk the
workspace (``find_file``, ``search_dir``, ``grep -rn``) stop at the same deadline, and the others
touch one file. (A pathological regular expression given to the shell's ``grep`` runs inside ``re``
and is not interrupted: run an untrusted agent's shell in a separate process if that matters.)

``execute`` never raises for a command line, whatever it holds (unbalanced quotes, a bad regular
expression, a file where a directory should be, huge or negative numbers, binary bytes): every
failure comes back as an observation, ``Refused: ...``, ``Timed out: ...`` or ``Error: ...``,
saying what went wrong and how to fix the command (:func:`describe_error`).

:class:`ACI` offers SWE-agent's commands::

    open PATH [LINE]         show a window of WINDOW numbered lines of PATH around LINE
    goto LINE                move the window of the open file
    scroll_down | scroll_up  move the window by WINDOW lines
    find_file NAME [DIR]     files whose name matches NAME (a glob) under DIR
    search_file TERM [PATH]  matching lines (with numbers) in PATH or the open file
    search_dir TERM [DIR]    files under DIR containing TERM, with a count each (summarised)
    edit START:END           replace lines START..END of the open file with the lines that follow,
    <replacement lines>      up to a line 'end_of_edit'; refused, with the reason, if the result
    end_of_edit              does not compile
    run_tests                run the workspace's tests (tests/test_*.py)
    submit                   finish

:class:`Shell` offers what a bare terminal gives an agent: ``ls``, ``cat``, ``grep -n``,
``grep -rn``, ``sed -n A,Bp``, ``sed -i s/OLD/NEW/`` and ``cat > FILE << EOF`` (no viewer, no
summaries, no linter), plus the same ``run_tests`` and ``submit``. Its output is cut at
``max_output_chars`` like any context window would cut it.

The functions the notebook's exercises rebuild (:func:`resolve_inside`, :func:`render_window`,
:func:`lint_edit`, :func:`summarise_search_dir`) are module-level, and :class:`ACI` takes them as
arguments, so the notebook can run the interface on the learner's own versions.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

from .sandbox import ExecResult, run_python


class OutsideWorkspace(PermissionError):
    """A command named a path whose real location is outside the workspace."""


class CommandTimeout(RuntimeError):
    """An in-process command ran past its deadline."""


# --- confinement -----------------------------------------------------------------------------------


def resolve_inside(root: str | Path, path: str | Path) -> Path:
    """The real path of ``path`` (relative to ``root`` unless absolute), refused unless inside ``root``.

    ``..`` components and symlinks are resolved first (``os.path.realpath``), so ``../x``,
    ``a/../../x``, an absolute path elsewhere and a symlink pointing out are all refused; a
    sibling directory whose name merely starts with the root's name (``/ws`` vs ``/ws-evil``) is too.
    """
    if not isinstance(path, (str, Path)) or str(path) == "":
        raise ValueError(f"path must be a non-empty str or Path, got {path!r}")
    if "\x00" in str(path):
        raise ValueError("path must not contain a NUL character")
    real_root = os.path.realpath(root)
    candidate = Path(path) if os.path.isabs(path) else Path(real_root) / path
    real = os.path.realpath(candidate)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise OutsideWorkspace(f"{str(path)!r} is outside the workspace (it resolves to {real}); "
                               "commands may only touch files inside it")
    return Path(real)


def describe_error(error: BaseException) -> str:
    """The observation for a command that failed: what went wrong and how to fix the command.

    ``Refused:`` for a path outside the workspace, ``Timed out:`` for a command past its limit,
    ``Error:`` for everything else (a bad regular expression, a file that is not a directory, an
    argument out of range, a file that is not text, a name the file system will not take...).
    """
    if isinstance(error, OutsideWorkspace):
        return f"Refused: {error}"
    if isinstance(error, CommandTimeout):
        return f"Timed out: {error}"
    if isinstance(error, re.error):
        where = f" at position {error.pos}" if error.pos is not None else ""
        return (f"Error: invalid regular expression {error.pattern!r}: {error.msg}{where}. Escape the special "
                "characters . ^ $ * + ? ( ) [ ] { } | \\ with a backslash to match them literally (grep -n "
                "'f\\(x\\)' FILE), or use search_file/search_dir, which match plain text")
    if isinstance(error, (FileNotFoundError, IsADirectoryError, ValueError, TypeError)):
        return f"Error: {error}"  # UnicodeDecodeError and UnicodeEncodeError are ValueErrors
    if isinstance(error, NotADirectoryError):
        return (f"Error: a path component is a file, not a directory ({_os_error_path(error)}); "
                "give a directory that exists in the workspace (ls shows them)")
    if isinstance(error, FileExistsError):
        return f"Error: {_os_error_path(error)} already exists and is not a directory; pick another path"
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
        return f"Error: the file system refused the command ({reason}: {_os_error_path(error)}); check the path"
    if isinstance(error, RecursionError):
        return "Error: the command is nested too deeply to process (a regular expression?); simplify it"
    if isinstance(error, (MemoryError, OverflowError)):
        return f"Error: the command asks for too much ({type(error).__name__}); use smaller numbers or a narrower search"
    return (f"Error: the command failed ({type(error).__name__}: {error}); check it against the list of "
            "commands and try again")


def _os_error_path(error: OSError) -> str:
    name = error.filename if error.filename is not None else "?"
    return repr(os.fsdecode(name) if isinstance(name, (bytes, str)) else str(name))[:300]


TEST_RUNNER = r'''
import importlib.util, pathlib, sys, traceback
files = sorted(pathlib.Path("tests").glob("test_*.py")) if pathlib.Path("tests").is_dir() else []
passed, failed = 0, []
for path in files:
    name = "tests_" + path.stem
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except BaseException as error:
        failed.append(f"{path}: could not import: {type(error).__name__}: {error}")
        continue
    for attr in sorted(dir(module)):
        if attr.startswith("test_") and callable(getattr(module, attr)):
            try:
                getattr(module, attr)()
                passed += 1
            except BaseException as error:
                tb = traceback.extract_tb(error.__traceback__)[-1]
                failed.append(f"{path}::{attr} FAILED: {type(error).__name__}: {error} "
                              f"({pathlib.Path(tb.filename).name}, line {tb.lineno})")
for line in failed:
    print(line)
summary = f"{passed} passed, {len(failed)} failed" + ("" if files else " (no tests/test_*.py found)")
print(summary, file=sys.stderr if failed or not files else sys.stdout)
sys.exit(1 if failed or not files else 0)
'''


class Workspace:
    """A directory that commands are confined to (see :func:`resolve_inside`)."""

    def __init__(self, root: str | Path) -> None:
        if not isinstance(root, (str, Path)) or not Path(root).is_dir():
            raise ValueError(f"root must be an existing directory, got {root!r}")
        self.root = Path(os.path.realpath(root))
        self.owned = False  # True when from_files made the directory: close() then deletes it

    def close(self) -> None:
        """Delete the directory if this workspace created it (``from_files`` without ``root``)."""
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)
            self.owned = False

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def from_files(cls, files: Mapping[str, str], root: str | Path | None = None) -> "Workspace":
        """A workspace holding ``files`` (relative path -> text), in ``root`` or a new temporary directory."""
        if not isinstance(files, Mapping) or not files:
            raise ValueError("files must be a non-empty dict of relative path -> text")
        owned = root is None
        root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="course-aci-"))
        root.mkdir(parents=True, exist_ok=True)
        workspace = cls(root)
        workspace.owned = owned
        for name, text in files.items():
            if not isinstance(name, str) or not isinstance(text, str):
                raise TypeError("files must map str paths to str contents")
            workspace.write(name, text)
        return workspace

    def resolve(self, path: str | Path) -> Path:
        return resolve_inside(self.root, path)

    def relative(self, path: Path) -> str:
        rel = os.path.relpath(path, self.root)
        return "." if rel == "." else rel

    def read(self, path: str | Path) -> str:
        target = self.resolve(path)
        if not target.is_file():
            raise FileNotFoundError(f"no file {str(path)!r} in the workspace")
        return target.read_text(encoding="utf-8")

    def write(self, path: str | Path, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        target = self.resolve(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def files(self, under: str | Path = ".") -> list[str]:
        """Relative paths of the regular files under ``under`` (symlinks are not followed)."""
        base = self.resolve(under)
        out = []
        for folder, dirs, names in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                full = Path(folder) / name
                if full.is_file() and not full.is_symlink():
                    out.append(self.relative(full))
        return sorted(out)

    def run_tests(self, *, timeout_s: float = 5.0, extra: Mapping[str, str] | None = None) -> ExecResult:
        """Run ``tests/test_*.py`` (every ``test_*`` function) in the sandbox, in this directory.

        ``extra`` adds files for this run only (hidden tests): they are written, run, and removed.
        """
        extra = dict(extra or {})
        written = []
        try:
            for name, text in extra.items():
                self.write(name, text)
                written.append(self.resolve(name))
            return run_python(TEST_RUNNER, timeout_s=timeout_s, workdir=self.root)
        finally:
            for path in written:
                path.unlink(missing_ok=True)


# --- the viewer, the linter, the summarised search ---------------------------------------------------


def render_window(lines: list[str], path: str, top: int, window: int) -> str:
    """SWE-agent's file viewer: a header, lines ``top..top+window-1`` numbered, and what is above/below.

    ``top`` is 1-based and clamped to the file (an empty file shows only the header)::

        [File: pkg/mod.py (40 lines total)]
        (10 more lines above)
        11:    x = 1
        ...
        (20 more lines below)
    """
    if not isinstance(lines, list):
        raise TypeError(f"lines must be a list of str, got {type(lines).__name__}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    n = len(lines)
    top = max(1, min(int(top), max(1, n - window + 1)))
    bottom = min(n, top + window - 1)
    out = [f"[File: {path} ({n} lines total)]"]
    if top > 1:
        out.append(f"({top - 1} more lines above)")
    out += [f"{i}:{lines[i - 1]}" for i in range(top, bottom + 1)]
    if bottom < n:
        out.append(f"({n - bottom} more lines below)")
    return "\n".join(out)


def lint_edit(source: str, start: int, end: int, replacement: str) -> tuple[str | None, str | None]:
    """Replace lines ``start..end`` (1-based, inclusive) of ``source`` with ``replacement``; compile it.

    Returns ``(new_source, None)`` when the result compiles and ``(None, reason)`` when it does not,
    the reason naming the error and its line (``IndentationError: unexpected indent (line 7)``).
    ``end = start - 1`` inserts before ``start`` without removing anything.
    """
    if not isinstance(source, str) or not isinstance(replacement, str):
        raise TypeError("source and replacement must be str")
    lines = source.splitlines(keepends=True)
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not (1 <= start <= len(lines) + 1 and start - 1 <= end <= len(lines)):
        raise ValueError(f"edit {start}:{end} is outside the file's lines 1..{len(lines)}")
    new_lines = replacement.splitlines(keepends=True)
    if new_lines and not new_lines[-1].endswith("\n"):
        new_lines[-1] += "\n"
    new_source = "".join(lines[:start - 1] + new_lines + lines[end:])
    try:
        compile(new_source, "<edit>", "exec", dont_inherit=True)
    except SyntaxError as error:
        return None, f"{type(error).__name__}: {error.msg} (line {error.lineno})"
    return new_source, None


def summarise_search_dir(files: Mapping[str, str], term: str, *, max_files: int = 10) -> str:
    """SWE-agent's ``search_dir`` result: the files containing ``term`` with a count each, or a refusal.

    Counts are occurrences (``text.count(term)``); files are listed in path order. With no match:
    ``No matches found for "TERM".``; with more than ``max_files`` files:
    ``More than MAX_FILES files matched for "TERM". Please narrow your search.``
    """
    if not isinstance(term, str) or not term:
        raise ValueError(f"term must be a non-empty str, got {term!r}")
    if isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 1:
        raise ValueError(f"max_files must be a positive int, got {max_files!r}")
    counts = {path: text.count(term) for path, text in sorted(files.items()) if term in text}
    if not counts:
        return f'No matches found for "{term}".'
    if len(counts) > max_files:
        return f'More than {max_files} files matched for "{term}". Please narrow your search.'
    lines = [f'Found {sum(counts.values())} matches for "{term}" in {len(counts)} files:']
    lines += [f"{path} ({n} matches)" for path, n in counts.items()]
    return "\n".join(lines)


# --- the two interfaces ---------------------------------------------------------------------------

ACI_DOC = """Commands (one per reply, in a ``` block):
  open PATH [LINE]        show a window of the file around LINE
  goto LINE               move the window to LINE
  scroll_down, scroll_up  move the window
  find_file NAME [DIR]    find files by name (glob allowed)
  search_file TERM [PATH] matching lines in PATH (or the open file), with line numbers
  search_dir TERM [DIR]   files containing TERM, with a count each
  edit START:END          replace lines START..END of the open file with the lines that follow,
  ...                     ending with a line 'end_of_edit'; an edit that breaks the syntax is refused
  end_of_edit
  run_tests               run the repository's tests
  submit                  submit your changes"""

SHELL_DOC = """Commands (one per reply, in a ``` block):
  ls [DIR], cat FILE, grep -n PATTERN FILE, grep -rn PATTERN [DIR], sed -n A,Bp FILE,
  sed -i 's/OLD/NEW/' FILE, cat > FILE << 'EOF' ... EOF
  run_tests               run the repository's tests
  submit                  submit your changes"""


class _Interface:
    kind = "interface"
    doc = ""

    def __init__(self, workspace: Workspace, *, timeout_s: float = 5.0, max_output_chars: int = 3000) -> None:
        if not isinstance(workspace, Workspace):
            raise TypeError(f"workspace must be a course.llm.aci.Workspace, got {type(workspace).__name__}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 600:
            raise ValueError(f"timeout_s must be in (0, 600] seconds, got {timeout_s!r}")
        if isinstance(max_output_chars, bool) or not isinstance(max_output_chars, int) or max_output_chars < 100:
            raise ValueError(f"max_output_chars must be an int >= 100, got {max_output_chars!r}")
        self.workspace, self.timeout_s, self.max_output_chars = workspace, float(timeout_s), max_output_chars
        self.submitted = False
        self._deadline = 0.0

    @property
    def system_prompt(self) -> str:
        return (f"You are fixing a bug in a Python repository through a {self.kind} interface. "
                f"Reply with a one-line thought and then exactly one command.\n{self.doc}")

    def _tick(self) -> None:
        if time.monotonic() > self._deadline:
            raise CommandTimeout(f"the command ran past its {self.timeout_s:g} s time limit and was stopped")

    def _cut(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        return text[: self.max_output_chars] + f"\n[output cut: {len(text) - self.max_output_chars} more characters]"

    def run_tests(self) -> str:
        result = self.workspace.run_tests(timeout_s=self.timeout_s)
        return result.feedback()

    def submit(self) -> str:
        self.submitted = True
        return "Submitted."

    def execute(self, command: str | None, *, cut: bool = True) -> str:
        """Run one command and return the observation; never raises for anything the command does.

        The observation is cut at ``max_output_chars`` (``cut=False`` returns all of it, to measure it).
        """
        if not isinstance(command, str) or not command.strip():
            return "No command found. Reply with a thought and one command in a ``` block.\n" + self.doc
        self._deadline = time.monotonic() + self.timeout_s
        try:
            out = self._dispatch(command.strip("\n"))
            return self._cut(out) if cut else out
        except Exception as error:  # noqa: BLE001  (the agent reads every failure; nothing reaches the caller)
            message = describe_error(error)
            return self._cut(message) if cut else message

    def _dispatch(self, command: str) -> str:
        raise NotImplementedError


class ACI(_Interface):
    """SWE-agent's interface: windowed viewer, summarised search, linted edits, per-command time limit."""

    kind = "agent-computer"
    doc = ACI_DOC

    def __init__(self, workspace: Workspace, *, window: int = 20, max_files: int = 10, timeout_s: float = 5.0,
                 max_output_chars: int = 3000, render: Callable = render_window, lint: Callable = lint_edit,
                 search_dir: Callable = summarise_search_dir, resolve: Callable = resolve_inside) -> None:
        super().__init__(workspace, timeout_s=timeout_s, max_output_chars=max_output_chars)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        self.window, self.max_files = window, max_files
        self.render, self.lint, self.search_dir_fn, self.resolve_fn = render, lint, search_dir, resolve
        self.current: str | None = None
        self.top = 1

    def _path(self, path: str) -> Path:
        return Path(self.resolve_fn(self.workspace.root, path))

    def _lines(self) -> list[str]:
        if self.current is None:
            raise ValueError("no file is open; use open PATH first")
        return self.workspace.read(self.current).splitlines()

    def view(self) -> str:
        return self.render(self._lines(), self.current, self.top, self.window)

    def open(self, path: str, line: int | None = None) -> str:
        target = self._path(path)
        if not target.is_file():
            raise FileNotFoundError(f"no file {path!r} in the workspace")
        self.current = self.workspace.relative(target)
        self.top = 1 if line is None else max(1, line - self.window // 2)
        return self.view()

    def goto(self, line: int) -> str:
        n = len(self._lines())
        if not 1 <= line <= max(n, 1):
            raise ValueError(f"line {line} is outside the file's lines 1..{n}")
        self.top = max(1, line - self.window // 2)
        return self.view()

    def scroll(self, direction: int) -> str:
        n = len(self._lines())
        self.top = max(1, min(self.top + direction * self.window, max(1, n - self.window + 1)))
        return self.view()

    def find_file(self, name: str, under: str = ".") -> str:
        base = self._path(under)
        hits = []
        for rel in self.workspace.files(base):
            self._tick()
            if fnmatch.fnmatch(Path(rel).name, name):
                hits.append(rel)
        if not hits:
            return f'No matches found for "{name}" in {self.workspace.relative(base)}.'
        return f'Found {len(hits)} matches for "{name}" in {self.workspace.relative(base)}:\n' + "\n".join(hits)

    def search_file(self, term: str, path: str | None = None) -> str:
        rel = self.workspace.relative(self._path(path)) if path else self.current
        if rel is None:
            raise ValueError("no file is open; give a path: search_file TERM PATH")
        hits = [(i, line) for i, line in enumerate(self.workspace.read(rel).splitlines(), 1) if term in line]
        if not hits:
            return f'No matches found for "{term}" in {rel}.'
        if len(hits) > 50:
            return f'More than 50 lines matched for "{term}" in {rel}. Please narrow your search.'
        return (f'Found {len(hits)} matches for "{term}" in {rel}:\n'
                + "\n".join(f"Line {i}:{line}" for i, line in hits))

    def search_dir(self, term: str, under: str = ".") -> str:
        base = self._path(under)
        texts = {}
        for rel in self.workspace.files(base):
            self._tick()
            try:
                texts[rel] = self.workspace.read(rel)
            except UnicodeDecodeError:
                continue
        return self.search_dir_fn(texts, term, max_files=self.max_files)

    def edit(self, start: int, end: int, replacement: str) -> str:
        source = self.workspace.read(self.current) if self.current else None
        if source is None:
            raise ValueError("no file is open; use open PATH first")
        n = len(source.splitlines())
        if not (1 <= start <= n + 1 and start - 1 <= end <= n):
            raise ValueError(f"edit {start}:{end} is outside the file's lines 1..{n}")
        if self.current.endswith(".py"):
            new, problem = self.lint(source, start, end, replacement)
        else:
            new, problem = apply_edit(source, start, end, replacement), None
        if problem:
            old_lines = source.splitlines()
            preview = apply_edit(source, start, end, replacement).splitlines()
            top = max(1, start - 3)
            return ("Your proposed edit has introduced new syntax error(s). Please read this error message "
                    f"carefully and then retry editing the file.\nERRORS:\n- {problem}\n\n"
                    "This is how your edit would have looked if applied\n-------------------------------------------------\n"
                    + self.render(preview, self.current, top, self.window)
                    + "\n-------------------------------------------------\n\n"
                    "This is the original code before your edit\n-------------------------------------------------\n"
                    + self.render(old_lines, self.current, top, self.window)
                    + "\n-------------------------------------------------\n"
                    "Your changes have NOT been applied. Please fix your edit command and try again.")
        self.workspace.write(self.current, new)
        self.top = max(1, start - 3)
        return "File updated. Please review the changes.\n" + self.view()

    def _dispatch(self, command: str) -> str:
        first, _, rest = command.partition("\n")
        if first.startswith("edit"):
            match = re.fullmatch(r"edit\s+(\d+):(\d+)\s*", first)
            if not match:
                raise ValueError("usage: edit START:END, then the new lines, then end_of_edit")
            body = rest.split("\n")
            if "end_of_edit" not in [b.strip() for b in body]:
                raise ValueError("an edit must end with a line 'end_of_edit'")
            body = body[:[b.strip() for b in body].index("end_of_edit")]
            return self.edit(int(match[1]), int(match[2]), "\n".join(body) + ("\n" if body else ""))
        name, args = _split_command(first)
        if name == "open" and 1 <= len(args) <= 2:
            return self.open(args[0], _int(args[1]) if len(args) == 2 else None)
        if name == "goto" and len(args) == 1:
            return self.goto(_int(args[0]))
        if name in ("scroll_down", "scroll_up") and not args:
            return self.scroll(1 if name == "scroll_down" else -1)
        if name == "find_file" and 1 <= len(args) <= 2:
            return self.find_file(*args)
        if name == "search_file" and 1 <= len(args) <= 2:
            return self.search_file(*args)
        if name == "search_dir" and 1 <= len(args) <= 2:
            return self.search_dir(*args)
        if name == "run_tests" and not args:
            return self.run_tests()
        if name == "submit" and not args:
            return self.submit()
        raise ValueError(f"unknown command or wrong arguments: {first!r}\n{self.doc}")


def apply_edit(source: str, start: int, end: int, replacement: str) -> str:
    """Lines ``start..end`` of ``source`` replaced by ``replacement``, with no syntax check (the ablation)."""
    lines = source.splitlines(keepends=True)
    new_lines = replacement.splitlines(keepends=True)
    if new_lines and not new_lines[-1].endswith("\n"):
        new_lines[-1] += "\n"
    return "".join(lines[:start - 1] + new_lines + lines[end:])


MAX_COMMAND_LINE = 10_000  # characters on a command's first line


def _split_command(line: str) -> tuple[str, list[str]]:
    """A command line as (name, arguments), split the way a shell would; clear errors otherwise."""
    if len(line) > MAX_COMMAND_LINE:
        raise ValueError(f"the command line is {len(line)} characters long; the limit is {MAX_COMMAND_LINE} "
                         "(put long text in a file with edit or a here-document, not on the command line)")
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise ValueError(f"could not parse the command: {error}") from None
    if not words:
        raise ValueError("empty command")
    return words[0], words[1:]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a line number, got {text!r}") from None


class Shell(_Interface):
    """A bare terminal's commands, emulated in Python on the confined workspace (no linter, raw output)."""

    kind = "shell"
    doc = SHELL_DOC

    def _dispatch(self, command: str) -> str:
        first, _, rest = command.partition("\n")
        heredoc = re.fullmatch(r"cat\s*>\s*(\S+)\s*<<\s*'?(\w+)'?\s*", first)
        if heredoc:
            body = rest.split("\n")
            if heredoc[2] not in body:
                raise ValueError(f"here-document not closed by a line {heredoc[2]!r}")
            self.workspace.write(heredoc[1], "\n".join(body[:body.index(heredoc[2])]) + "\n")
            return ""
        name, args = _split_command(first)
        ws = self.workspace
        if name == "ls" and len(args) <= 1:
            base = ws.resolve(args[0] if args else ".")
            if not base.exists():
                raise FileNotFoundError(f"ls: no file or directory {args[0]!r} in the workspace")
            if not base.is_dir():
                return args[0]  # ls FILE names the file, as a shell's does
            return "\n".join(sorted(p.name + ("/" if p.is_dir() else "") for p in base.iterdir()
                                    if not p.name.startswith(".")))
        if name == "cat" and len(args) == 1:
            return ws.read(args[0])
        if name == "grep" and args[:1] == ["-n"] and len(args) == 3:
            pattern = re.compile(args[1])
            return "\n".join(f"{i}:{line}" for i, line in enumerate(ws.read(args[2]).splitlines(), 1)
                             if pattern.search(line))
        if name == "grep" and args[:1] == ["-rn"] and len(args) in (2, 3):
            pattern, out = re.compile(args[1]), []
            for rel in ws.files(args[2] if len(args) == 3 else "."):
                self._tick()
                try:
                    text = ws.read(rel)
                except UnicodeDecodeError:  # a binary file: grep says so instead of printing it
                    if pattern.search(ws.resolve(rel).read_bytes().decode("latin-1")):
                        out.append(f"Binary file ./{rel} matches")
                    continue
                for i, line in enumerate(text.splitlines(), 1):
                    if pattern.search(line):
                        out.append(f"./{rel}:{i}:{line}")
            return "\n".join(out)
        if name == "sed" and args[:1] == ["-n"] and len(args) == 3:
            match = re.fullmatch(r"(\d+),(\d+)p", args[1])
            if not match:
                raise ValueError("usage: sed -n A,Bp FILE (A and B are line numbers, 1 or more)")
            first_line, last_line = int(match[1]), int(match[2])
            if first_line < 1:
                raise ValueError("sed -n A,Bp: line numbers start at 1")
            lines = ws.read(args[2]).splitlines()
            return "\n".join(lines[first_line - 1:max(first_line, last_line)])
        if name == "sed" and args[:1] == ["-i"] and len(args) == 3:
            match = re.fullmatch(r"s/((?:[^/\\]|\\.)*)/((?:[^/\\]|\\.)*)/(g?)", args[1])
            if not match:
                raise ValueError("usage: sed -i 's/OLD/NEW/' FILE")
            old, new = match[1].replace("\\/", "/"), match[2].replace("\\/", "/")
            pattern = re.compile(old)
            lines = ws.read(args[2]).split("\n")
            lines = [pattern.sub(new, line, count=0 if match[3] else 1) for line in lines]
            ws.write(args[2], "\n".join(lines))
            return ""  # sed is silent, whether or not anything matched
        if name == "run_tests" and not args:
            return self.run_tests()
        if name == "submit" and not args:
            return self.submit()
        raise ValueError(f"command not supported here: {first!r}\n{self.doc}")
