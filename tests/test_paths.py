"""Every repository path the docs, comments and error messages name exists.

A reader who follows ``see docs/deploy.md`` or ``configs/search/v2_proxy.yaml`` must find the file. The checker
scans the Markdown docs (README.md, CONTRIBUTING.md, docs/, benchmarks/README.md), the comments, docstrings and
string literals of src/, and the comments and docstrings of tests/ (test strings may name missing files on purpose).
A path is anything under a top-level folder of the repository; a glob (``*``, ``{a,b}``, ``$var``) must match at
least one file.
"""

from __future__ import annotations

import ast
import glob
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("src", "docs", "tests", "benchmarks", "configs", "scripts", "requirements")

# A path starts at a top-level folder that is not itself part of a longer path or a URL (hence the look-behind),
# and may hold glob parts: ``*``, a shell variable ``$m`` and a brace list ``{1,2,3}``.
PATH_RE = re.compile(
    r"(?<![\w/.:$-])(?:" + "|".join(TOP) + r")/(?:[\w/.*$-]|\{[\w,.-]*\})*[\w*}]",
)

# Inside the package, modules are named from the package folder (``models/facts.py``, ``efficientformer/cli/train.py``).
AREAS = ("utils", "models", "data", "runtime", "train", "dense", "deploy", "inference", "search", "bench", "cli")
MODULE_RE = re.compile(r"(?<![\w/.:$-])(?:efficientformer/)?(?:" + "|".join(AREAS) + r")/[\w/]*\w\.py\b")

# Paths that exist only while or after something runs, or that another branch adds; each says why.
ALLOWED: set[str] = set()


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [p for alt in match.group(1).split(",") for p in _expand_braces(head + alt + tail)]


def path_exists(path: str, root: Path = ROOT) -> bool:
    """Whether ``path`` (relative to ``root``, possibly a glob) names at least one file or folder."""
    path = path.rstrip(".")  # a path that ends a sentence
    if not any(c in path for c in "*${"):
        return (root / path).exists()
    for pattern in _expand_braces(re.sub(r"\$\w+", "*", path)):
        if not glob.glob(str(root / pattern)):
            return False
    return True


def dangling_paths(text: str, root: Path = ROOT) -> list[str]:
    """The repository paths named in ``text`` that do not exist under ``root``, in order, once each."""
    missing: list[str] = []
    for match in PATH_RE.finditer(text):
        path = match.group(0).rstrip(".")
        if path not in ALLOWED and path not in missing and not path_exists(path, root):
            missing.append(path)
    package = root / "src" / "efficientformer"
    for match in MODULE_RE.finditer(text):
        path = match.group(0)
        if path not in missing and not (package / path.removeprefix("efficientformer/")).is_file():
            missing.append(path)
    return missing


def _python_prose(source: str, strings: bool) -> str:
    """The comments and docstrings of ``source`` (and every string literal when ``strings``), one per line."""
    parts = [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT or (strings and tok.type == tokenize.STRING)
    ]
    if strings:
        # f-strings tokenize into pieces on 3.12+; the AST joins their constant parts.
        parts += [
            n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
    else:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    parts.append(doc)
    return "\n".join(parts)


def _sources() -> list[tuple[str, str]]:
    docs = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "benchmarks" / "README.md"]
    docs += sorted((ROOT / "docs").rglob("*.md"))
    found = [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in docs if p.is_file()]
    for path in sorted((ROOT / "src").rglob("*.py")):
        found.append((str(path.relative_to(ROOT)), _python_prose(path.read_text(encoding="utf-8"), strings=True)))
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == Path(__file__).name:  # its own unit tests name made-up paths
            continue
        found.append((str(path.relative_to(ROOT)), _python_prose(path.read_text(encoding="utf-8"), strings=False)))
    return found


@pytest.mark.fast
def test_every_named_path_exists() -> None:
    problems = [f"{name}: {path}" for name, text in _sources() for path in dangling_paths(text)]
    assert not problems, "paths that do not exist:\n" + "\n".join(problems)


@pytest.mark.fast
def test_checker_finds_a_made_up_path(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "real.md").write_text("x")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a_1.yaml").write_text("x")
    text = (
        "See docs/real.md and docs/gone.md. The recipes are configs/*.yaml, also configs/a_{1,2}.yaml; "
        "configs/b_$m.yaml is not there. https://example.org/docs/remote.md is a URL and "
        "/abs/clone/configs/elsewhere is not a repository path. Modules: models/real.py, models/gone.py and "
        "efficientformer/cli/gone.py."
    )
    (tmp_path / "src" / "efficientformer" / "models").mkdir(parents=True)
    (tmp_path / "src" / "efficientformer" / "models" / "real.py").write_text("x")
    assert dangling_paths(text, tmp_path) == [
        "docs/gone.md",
        "configs/a_{1,2}.yaml",
        "configs/b_$m.yaml",
        "models/gone.py",
        "efficientformer/cli/gone.py",
    ]
    assert dangling_paths("see docs/real.md.", tmp_path) == []


@pytest.mark.fast
def test_comments_and_docstrings_are_read() -> None:
    source = '"""Module, see docs/a.md."""\n\nX = "tests/b.py"  # and scripts/c.sh\n'
    assert PATH_RE.findall(_python_prose(source, strings=False)) == ["scripts/c.sh", "docs/a.md"]
    assert "tests/b.py" in PATH_RE.findall(_python_prose(source, strings=True))
