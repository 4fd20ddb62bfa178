"""course.llm.aci: the workspace refuses paths outside it (.., absolute, symlinks), edits that break
the syntax are refused and leave the file as it was, and every command has a time limit."""

from __future__ import annotations

import os

import pytest

from course.llm import aci

FILES = {"pkg/__init__.py": "", "pkg/mod.py": "def f(x):\n    y = x + 1\n    return y\n",
         "tests/test_mod.py": "from pkg.mod import f\n\n\ndef test_f():\n    assert f(1) == 2\n"}


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    ws = aci.Workspace.from_files(FILES, root=root)
    (tmp_path / "secret.txt").write_text("secret\n")
    (tmp_path / "ws-evil").mkdir()
    os.symlink(tmp_path / "secret.txt", root / "link_out")
    os.symlink(tmp_path, root / "dir_out")
    os.symlink(root / "pkg" / "mod.py", root / "link_in")
    return ws


OUTSIDE = ["../secret.txt", "pkg/../../secret.txt", "/etc/passwd", "link_out", "dir_out/secret.txt",
           "../ws-evil/x.py", "dir_out"]


@pytest.mark.parametrize("path", OUTSIDE)
def test_resolve_inside_refuses_paths_outside_the_workspace(workspace, path):
    with pytest.raises(aci.OutsideWorkspace):
        workspace.resolve(path)
    with pytest.raises(PermissionError):  # OutsideWorkspace is a PermissionError
        aci.resolve_inside(workspace.root, path)


def test_resolve_inside_allows_paths_inside_including_symlinks_that_stay_inside(workspace):
    root = workspace.root
    assert workspace.resolve("pkg/mod.py") == root / "pkg" / "mod.py"
    assert workspace.resolve("pkg/../pkg/mod.py") == root / "pkg" / "mod.py"
    assert workspace.resolve(".") == root
    assert workspace.resolve("link_in") == root / "pkg" / "mod.py"
    assert workspace.resolve(str(root / "new.py")) == root / "new.py"


@pytest.mark.parametrize("bad", ["", None, 3, "a\x00b"])
def test_resolve_inside_rejects_malformed_paths(workspace, bad):
    with pytest.raises((ValueError, TypeError)):
        aci.resolve_inside(workspace.root, bad)


@pytest.mark.parametrize("command", ["open ../secret.txt", "open link_out", "open /etc/passwd", "search_dir secret ..",
                                     "find_file secret.txt /", "search_file secret dir_out/secret.txt",
                                     "open dir_out/secret.txt"])
def test_aci_commands_refuse_paths_outside_the_workspace(workspace, command):
    out = aci.ACI(workspace).execute(command)
    assert out.startswith("Refused:") and "outside the workspace" in out
    assert "secret\n" not in out


@pytest.mark.parametrize("command", ["cat ../secret.txt", "cat link_out", "grep -rn secret ..", "ls ..",
                                     "sed -i 's/a/b/' ../secret.txt", "cat > ../escape.txt << EOF\nx\nEOF",
                                     "cat > link_out << EOF\nx\nEOF", "grep -n secret dir_out/secret.txt"])
def test_shell_commands_refuse_paths_outside_the_workspace(workspace, command, tmp_path):
    out = aci.Shell(workspace).execute(command)
    assert out.startswith("Refused:"), out
    assert (tmp_path / "secret.txt").read_text() == "secret\n"
    assert not (tmp_path / "escape.txt").exists()


def test_edit_that_breaks_the_syntax_is_refused_and_the_file_is_unchanged(workspace):
    interface = aci.ACI(workspace)
    interface.execute("open pkg/mod.py")
    before = workspace.read("pkg/mod.py")
    out = interface.execute("edit 2:2\n      y = x + 2\nend_of_edit")
    assert "syntax error" in out and "IndentationError" in out and "NOT been applied" in out
    assert workspace.read("pkg/mod.py") == before
    out = interface.execute("edit 3:3\n    return (y\nend_of_edit")
    assert "SyntaxError" in out and workspace.read("pkg/mod.py") == before
    out = interface.execute("edit 2:2\n    y = x + 2\nend_of_edit")
    assert out.startswith("File updated") and "2:    y = x + 2" in out
    assert workspace.read("pkg/mod.py") == "def f(x):\n    y = x + 2\n    return y\n"


def test_lint_edit_catches_return_outside_a_function_and_validates_ranges():
    source = "def f():\n    return 1\n"
    assert aci.lint_edit(source, 2, 2, "return 2\n")[0] is None
    assert aci.lint_edit(source, 3, 2, "x = 1")[0] == source + "x = 1\n"  # insertion at the end
    for start, end in ((0, 1), (2, 0), (4, 4)):
        with pytest.raises(ValueError, match="outside the file"):
            aci.lint_edit(source, start, end, "x = 1\n")


def test_viewer_window_numbers_lines_and_says_what_is_above_and_below():
    lines = [f"l{i}" for i in range(1, 11)]
    assert aci.render_window(lines, "m.py", 4, 3) == ("[File: m.py (10 lines total)]\n(3 more lines above)\n4:l4\n5:l5\n"
                                                      "6:l6\n(4 more lines below)")
    assert aci.render_window(lines, "m.py", 99, 3).splitlines()[-1] == "10:l10"  # clamped, window stays full
    assert aci.render_window([], "e.py", 1, 5) == "[File: e.py (0 lines total)]"
    with pytest.raises(ValueError, match="window"):
        aci.render_window(lines, "m.py", 1, 0)


def test_search_dir_summarises_and_refuses_too_many_files():
    files = {f"m{i:02d}.py": "f()\nf()" for i in range(3)}
    assert aci.summarise_search_dir(files, "f(", max_files=3).splitlines() == [
        'Found 6 matches for "f(" in 3 files:', "m00.py (2 matches)", "m01.py (2 matches)", "m02.py (2 matches)"]
    assert aci.summarise_search_dir(files, "f(", max_files=2).startswith("More than 2 files matched")
    assert aci.summarise_search_dir(files, "zzz") == 'No matches found for "zzz".'
    with pytest.raises(ValueError, match="term"):
        aci.summarise_search_dir(files, "")


def test_aci_navigation_and_search_commands(workspace):
    interface = aci.ACI(workspace, window=2)
    assert interface.execute("find_file mod.py").splitlines()[1:] == ["pkg/mod.py"]
    assert "Line 1:def f(x):" in interface.execute("search_file def pkg/mod.py")
    assert interface.execute("open pkg/mod.py").splitlines()[1:] == ["1:def f(x):", "2:    y = x + 1",
                                                                    "(1 more lines below)"]
    assert "3:    return y" in interface.execute("scroll_down")
    assert "1:def f(x):" in interface.execute("goto 1")
    assert interface.execute("goto 99").startswith("Error:")
    assert interface.execute("frobnicate").startswith("Error: unknown command")
    assert interface.execute(None).startswith("No command found")
    assert interface.execute("edit 1:1\nx = 1").startswith("Error: an edit must end")


def test_run_tests_runs_in_the_sandbox_and_hidden_files_are_removed_after(workspace):
    result = workspace.run_tests(timeout_s=10, extra={"tests/test_hidden.py": "def test_no():\n    assert False\n"})
    assert not result.ok and "test_no FAILED" in result.stdout
    assert not (workspace.root / "tests" / "test_hidden.py").exists()
    assert workspace.run_tests(timeout_s=10).ok


def test_every_command_has_a_time_limit(tmp_path):
    ws = aci.Workspace.from_files({"tests/test_hang.py": "def test_hang():\n    while True:\n        pass\n"},
                                  root=tmp_path / "hang")
    out = aci.ACI(ws, timeout_s=0.5).execute("run_tests")
    assert "timed out after 0.5 s" in out
    many = aci.Workspace.from_files({f"f{i}.py": "x = 1\n" for i in range(50)}, root=tmp_path / "many")
    assert aci.ACI(many, timeout_s=1e-9).execute("search_dir x").startswith("Timed out:")
    assert aci.Shell(many, timeout_s=1e-9).execute("grep -rn x .").startswith("Timed out:")


def test_shell_is_plain_sed_is_silent_and_output_is_cut(workspace):
    shell = aci.Shell(workspace, max_output_chars=100)
    assert shell.execute("sed -i 's/nothing matches this/x/' pkg/mod.py") == ""
    assert shell.execute("sed -i 's/^    y = x \\+ 1$/      y = x + 2/' pkg/mod.py") == ""  # no linter
    assert "      y = x + 2" in workspace.read("pkg/mod.py")
    workspace.write("big.txt", "word\n" * 100)
    assert shell.execute("cat big.txt").endswith("more characters]")
    assert shell.execute("sed -n 2,3p pkg/mod.py") == "      y = x + 2\n    return y"


def test_workspace_from_files_owns_and_deletes_its_directory():
    with aci.Workspace.from_files({"a.py": "x = 1\n"}) as ws:
        root = ws.root
        assert (root / "a.py").read_text() == "x = 1\n"
    assert not root.exists()


def test_interfaces_validate_their_arguments(workspace):
    with pytest.raises(TypeError, match="workspace"):
        aci.ACI("/tmp")
    with pytest.raises(ValueError, match="timeout_s"):
        aci.Shell(workspace, timeout_s=0)
    with pytest.raises(ValueError, match="window"):
        aci.ACI(workspace, window=0)
    with pytest.raises(ValueError, match="root"):
        aci.Workspace("/no/such/dir")
    with pytest.raises(ValueError, match="files"):
        aci.Workspace.from_files({})


# --- execute never raises: every failure is an observation the agent reads ------------------------


@pytest.mark.parametrize("command, says", [
    ("grep -n ( pkg/mod.py", "invalid regular expression"),
    ("grep -rn 'f(x' .", "Escape the special characters"),
    ("sed -i 's/(/x/' pkg/mod.py", "invalid regular expression"),
    ("sed -i 's/x/\\9/' pkg/mod.py", "invalid regular expression"),
    ("ls pkg/mod.py/x", "Error:"),
    ("cat > pkg/mod.py/new.py << EOF\nx\nEOF", "not a directory"),
    ("sed -n 0,3p pkg/mod.py", "line numbers start at 1"),
    ("sed -n -1,3p pkg/mod.py", "usage: sed -n"),
    ("cat 'unclosed", "could not parse"),
    ("cat " + "a" * 5000, "Error:"),
    ("grep -n " + "x" * 20000 + " pkg/mod.py", "the limit is 10000"),
    ("ls nowhere", "no file or directory"),
])
def test_shell_turns_every_failure_into_an_observation(workspace, command, says):
    out = aci.Shell(workspace).execute(command)
    assert isinstance(out, str) and says in out, out
    assert workspace.read("pkg/mod.py") == FILES["pkg/mod.py"]  # a failed command changes nothing


def test_shell_ls_of_a_file_names_it_and_grep_reports_binary_files(workspace):
    shell = aci.Shell(workspace)
    assert shell.execute("ls pkg/mod.py") == "pkg/mod.py"
    (workspace.root / "blob.bin").write_bytes(b"\xff\xfe return \x00\x01")
    out = shell.execute("grep -rn return .")
    assert "Binary file ./blob.bin matches" in out and "./pkg/mod.py:3:    return y" in out


@pytest.mark.parametrize("command", ["goto -5", "goto " + "9" * 5000, "open pkg/mod.py " + "9" * 40,
                                     "edit 99999999999999999999:1\nx\nend_of_edit", "search_file ( pkg/mod.py",
                                     "find_file [ pkg", "open pkg/mod.py/x", "search_dir x pkg/mod.py"])
def test_aci_turns_every_failure_into_an_observation(workspace, command):
    interface = aci.ACI(workspace)
    interface.execute("open pkg/mod.py")
    out = interface.execute(command)
    assert isinstance(out, str) and out


def test_describe_error_says_what_went_wrong_for_any_exception():
    import re
    try:
        re.compile("(")
    except re.error as error:
        assert "missing )" in aci.describe_error(error)
    assert aci.describe_error(NotADirectoryError(20, "Not a directory", "a/b")).startswith("Error: a path component")
    assert aci.describe_error(KeyError("x")).startswith("Error: the command failed (KeyError")
    assert aci.describe_error(aci.OutsideWorkspace("'..' is outside")).startswith("Refused:")


def _fuzz_commands(rng, count):
    """Random and adversarial command lines: the grammar's pieces, broken and recombined."""
    names = ["open", "goto", "scroll_down", "scroll_up", "find_file", "search_file", "search_dir", "edit",
             "run_tests", "submit", "ls", "cat", "grep", "sed", "rm", "cd", "python", "", "end_of_edit"]
    paths = [".", "..", "../secret.txt", "/etc/passwd", "/", "/proc/self/environ", "/dev/zero", "link_out",
             "dir_out", "dir_out/secret.txt", "pkg", "pkg/mod.py", "pkg/mod.py/x", "link_in", "../ws-evil/x",
             "blob.bin", "new/deep/file.py", "a/" * 300 + "x", "x" * 300, "~", "$HOME/x", "*", "-rf", "pkg/./../..",
             "\x00", "caf\u00e9", "\udcff", "tests/test_mod.py", str(os.sep * 3) + "tmp"]
    numbers = ["0", "-1", "1", "2", "3", "-999999", "9" * 30, "9" * 5000, "1e9", "nan", "3:2", "1:0", "2:3", "0:0"]
    regexes = ["(", ")", "[", "*", "+?", "\\", "a{99999}", "(?P<", "\\g<1>", "$", "^", "f(x", "[^]", "x|", "(?=",
               "return", "def", ".*", "\\d+", "(a|b)*c", "\\1"]
    junk = ["'", '"', "\\", "<<", ">", "|", ";", "&&", "`", "$(", "\n", "\t", "\x1b[2J", "\xff", "\u202e"]
    out = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.05:
            out.append(rng.choice(["", " ", "\n\n", "   \t", None, 42, b"ls"]))
            continue
        if kind < 0.08:
            out.append(rng.choice(names) + " " + rng.choice(["x", "(", "'", "9"]) * rng.randint(1000, 30000))
            continue
        if kind < 0.18:  # here-documents and edits, with and without their end lines
            target = rng.choice(paths)
            body = "\n".join(rng.choice(["x = 1", "  bad", "EOF", "end_of_edit", "", rng.choice(junk)])
                             for _ in range(rng.randint(0, 5)))
            if rng.random() < 0.5:
                out.append(f"cat > {target} << {rng.choice(['EOF', chr(39) + 'EOF' + chr(39), 'X'])}\n{body}")
            else:
                out.append(f"edit {rng.choice(numbers)}:{rng.choice(numbers)}\n{body}")
            continue
        words = [rng.choice(names)]
        if words[0] == "grep":
            words.append(rng.choice(["-n", "-rn", "-x", ""]))
        if words[0] == "sed":
            flag = rng.choice(["-n", "-i", ""])
            words += [flag, rng.choice([f"{rng.choice(numbers)},{rng.choice(numbers)}p",
                                        f"'s/{rng.choice(regexes)}/{rng.choice(regexes)}/{rng.choice(['', 'g'])}'",
                                        "s/a/b", rng.choice(regexes)])]
        for _ in range(rng.randint(0, 3)):
            pool = rng.choice([paths, numbers, regexes, junk])
            words.append(rng.choice(pool))
        line = " ".join(words)
        if rng.random() < 0.2:  # binary and control bytes anywhere
            i = rng.randint(0, len(line))
            line = line[:i] + "".join(chr(rng.randint(0, 255)) for _ in range(rng.randint(1, 8))) + line[i:]
        out.append(line)
    return out


def _snapshot(folder):
    return {str(p): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


def test_fuzz_execute_never_raises_and_stays_inside_the_workspace(tmp_path):
    """A few thousand random and adversarial command lines (fixed seed, a few seconds): each observation
    is a str, nothing outside the workspace changes, and no outside file's text reaches an observation."""
    import random
    import time
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOPSECRET-7f3a\n")
    root = tmp_path / "ws"
    ws = aci.Workspace.from_files(FILES, root=root)
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    os.symlink(outside / "secret.txt", root / "link_out")
    os.symlink(outside, root / "dir_out")
    os.symlink(outside / "made-by-agent.txt", root / "dangling_out")
    os.symlink(root / "pkg" / "mod.py", root / "link_in")
    (tmp_path / "ws-evil").mkdir()
    before = _snapshot(tmp_path / "outside"), _snapshot(tmp_path / "ws-evil"), sorted(os.listdir(tmp_path))
    passwd = open("/etc/passwd", "rb").read()
    rng = random.Random(20240611)
    commands = _fuzz_commands(rng, 3000)
    interfaces = [aci.ACI(ws, timeout_s=2.0, max_output_chars=500), aci.Shell(ws, timeout_s=2.0)]
    start = time.perf_counter()
    for i, command in enumerate(commands):
        if isinstance(command, str) and command.strip().startswith("run_tests"):
            continue  # a sandboxed process per call: tested on its own
        interface = interfaces[i % 2]
        out = interface.execute(command)
        assert isinstance(out, str), (command, out)
        assert "TOPSECRET" not in out and "root:x:0:0" not in out, command
    assert time.perf_counter() - start < 60
    after = _snapshot(tmp_path / "outside"), _snapshot(tmp_path / "ws-evil"), sorted(os.listdir(tmp_path))
    assert after == before
    assert open("/etc/passwd", "rb").read() == passwd
    assert not (outside / "made-by-agent.txt").exists()
