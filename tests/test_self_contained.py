"""The repository stands on its own: nothing in it reads ``../shared``.

CI clones the project with the team's ``shared/`` folder beside it, so a test
or command that read from there would pass on CI and fail for every user.
Two guards: this scan of every tracked text file, and the audit hook in
``conftest.py`` that fails any open or listing of that folder during the tests.
"""

import re
import subprocess

import pytest

from conftest import REPO, SIBLING_SHARED

# "../shared", "parent / 'shared'" and the team folder's own layout.
_READS_SHARED = re.compile(r"\.\./shared\b|parents?\b[^\n]{0,20}/\s*['\"]shared['\"]|shared/data/")
_GUARDS = (REPO / "tests" / "conftest.py", REPO / "tests" / "test_self_contained.py")
_TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".sh", ".json", ".yaml", ".yml", ""}


def _project_files() -> list[str]:
    """The files git tracks or would (untracked, not ignored); every file outside
    hidden folders, virtual environments and runs where this is no git checkout."""
    git = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True)
    if git.returncode == 0:
        return git.stdout.splitlines()
    return [str(p.relative_to(REPO)) for p in REPO.rglob("*")
            if not any(part.startswith(".") or part in ("runs", "build")
                       for part in p.relative_to(REPO).parts)]


def _tracked_text_files() -> list:
    return [REPO / n for n in _project_files()
            if (REPO / n).is_file() and (REPO / n).suffix in _TEXT_SUFFIXES
            and not n.startswith("tests/data/")]


def test_no_file_refers_to_the_sibling_shared_folder():
    offenders = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
                 for path in _tracked_text_files() if path not in _GUARDS
                 for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                 if _READS_SHARED.search(line)]
    assert not offenders, "reads outside the repository:\n" + "\n".join(offenders)


def test_the_scan_and_the_hook_would_catch_a_read():
    assert _READS_SHARED.search('KAGGLE_CSV = REPO.parent / "shared" / "data"')
    assert _READS_SHARED.search("--labels_csv=../shared/data/hpa2019/train.csv")
    assert not _READS_SHARED.search("--workdir=/shared/runs/exp1")
    with pytest.raises(PermissionError, match="outside the repository"):
        open(SIBLING_SHARED / "data" / "hpa2019" / "train.csv")
