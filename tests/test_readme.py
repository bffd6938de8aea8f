"""The README and docs/results.md name only things that exist, and the README stays short.

Checked without running anything: every repository path that the two files name in `backticks` or
in a markdown link exists; every `--config X`, `python benchmarks/x.py` and `python -m loradora.y`
names an existing file; every `Class.method` names a method that a class in loradora/ defines; the
README is at most 220 lines, with one figure and one table of results; its test command is the one
`.ci/run` runs. Paths that runs create (under results/ and data/, the files of a run folder) and
placeholders such as `results/<run>/` are not looked for.
"""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
RESULTS = REPO / "docs" / "results.md"
MAX_README_LINES = 220
EXTENSIONS = (".py", ".yaml", ".md", ".png", ".txt")
CREATED_BY_RUNS = ("results", "data")  # only their README.md is in git
EXAMPLES = {"my.yaml"}  # names a reader types for their own file, not files of the project

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PATHLIKE = re.compile(r"[\w.\-/]+")


def inline_spans(text: str) -> list[str]:
    """The `code spans` of a markdown text, outside its fenced blocks."""
    return SPAN.findall(FENCE.sub("", text))


def span_tokens(text: str) -> list[str]:
    """The words of every code span, with the punctuation around a word stripped."""
    return [token.strip("()[],;:'\"") for span in inline_spans(text) for token in span.split()]


def run_outputs() -> set[str]:
    """The files of a run folder, as results/README.md's table names them (`config.yaml`, ...)."""
    table = (REPO / "results" / "README.md").read_text()
    return {name for line in table.splitlines() if line.startswith("| `")
            for name in re.findall(r"`([^`]+)`", line.split("|")[1])}


def file_names() -> set[str]:
    """The file names anywhere in the repository (outside .git), for a bare `default.yaml`."""
    return {path.name for path in REPO.rglob("*")
            if not {".git", "__pycache__"} & set(path.relative_to(REPO).parts) and path.is_file()}


def is_path_claim(token: str) -> bool:
    """A word that names a repository path: a path under a top-level entry of the repository, or a
    file name of a kind the project keeps. Not a tag such as `loss/batch`, a formula, a URL or
    an option."""
    if not token or token.startswith(("/", "-", "~")) or not PATHLIKE.fullmatch(token):
        return False
    if "/" in token:
        return (REPO / token.split("/")[0]).exists() or token.rstrip("/").endswith(EXTENSIONS)
    return token.endswith(EXTENSIONS)


def is_placeholder(token: str) -> bool:
    return any(mark in token for mark in ("<", ">", "...", "*"))


def missing_span_paths(text: str) -> list[str]:
    """The paths named in the text's code spans (relative to the repository) that do not exist."""
    outputs, names = run_outputs(), None
    missing = []
    for token in span_tokens(text):
        if is_placeholder(token) or token in EXAMPLES or not is_path_claim(token):
            continue
        top = token.split("/")[0]
        if "/" in token and top in CREATED_BY_RUNS and not token.endswith("README.md"):
            continue  # data/MNIST/raw/, results/.pretrained_cache/: made by a run
        if (REPO / token).exists():
            continue
        if "/" not in token:
            names = file_names() if names is None else names
            if token in names or token in outputs:
                continue  # `default.yaml` in the configs/ row; `loss_curves.png` of a run folder
        missing.append(token)
    return missing


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a markdown file's headings: lower case, punctuation dropped,
    spaces as hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCE.sub("", text), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def missing_link_targets(text: str, folder: Path) -> list[str]:
    """The relative link and image targets of the text that do not exist, from ``folder``; a
    target's #anchor must be a heading of the markdown file it points to."""
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # https://..., mailto:, an anchor in the same file
        path, _, anchor = target.partition("#")
        if not (folder / path).exists():
            missing.append(target)
        elif anchor and path.endswith(".md") and anchor not in anchors((folder / path).read_text()):
            missing.append(target)
    return missing


def missing_commands(text: str) -> list[str]:
    """Configs, benchmark scripts and loradora modules named by commands anywhere in the text,
    fenced blocks included, that do not exist."""
    missing = []
    for config in re.findall(r"--config[ =]+([^\s`\"')]+)", text):
        if config not in EXAMPLES and not (REPO / config).is_file():
            missing.append(f"--config {config}")
    for script in re.findall(r"python\s+(benchmarks/[\w./-]+)", text):
        if not (REPO / script).is_file():
            missing.append(f"python {script}")
    for module in re.findall(r"python\s+-m\s+(loradora(?:\.\w+)*)", text):
        parts = module.split(".")
        if not ((REPO.joinpath(*parts).with_suffix(".py")).is_file()
                or (REPO.joinpath(*parts) / "__init__.py").is_file()):
            missing.append(f"python -m {module}")
    if "dora_example.py" in text and not (REPO / "dora_example.py").is_file():
        missing.append("dora_example.py")
    return missing


def tables(text: str) -> list[list[str]]:
    """The markdown tables of the text, outside fenced blocks, each as its rows."""
    found, rows = [], []
    for line in FENCE.sub("", text).splitlines() + [""]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            found.append(rows)
            rows = []
    return found


def loradora_classes() -> dict[str, set[str]]:
    """Every class defined in loradora/*.py, with the names of what its body defines."""
    classes: dict[str, set[str]] = {}
    for path in sorted((REPO / "loradora").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, set()).update(
                    child.name for child in node.body
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
    return classes


def missing_methods(text: str) -> list[str]:
    """`Class.method` spans whose class is a loradora class that defines no such method."""
    classes = loradora_classes()
    return [span for span in inline_spans(text)
            if (match := re.fullmatch(r"(\w+)\.(\w+)", span)) and match[1] in classes
            and match[2] not in classes[match[1]]]


def readme_test_command(text: str) -> str:
    """The README's test command: the fenced line that runs pytest, without its comment."""
    lines = [line.split("#")[0].strip() for block in FENCE.findall(text) for line in block.splitlines()
             if "python -m pytest" in line]
    assert len(lines) == 1, f"the README should give one test command, found {lines}"
    return lines[0]


def ci_command() -> str:
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
             if "python -m pytest" in line and not line.lstrip().startswith("#")]
    assert len(lines) == 1, f".ci/run should run one test command, found {lines}"
    return " ".join(word for word in lines[0].split() if word != "-q")


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


@pytest.fixture(scope="module")
def results() -> str:
    return RESULTS.read_text()


def test_readme_paths_exist(readme):
    assert missing_span_paths(readme) == []
    assert missing_link_targets(readme, REPO) == []


def test_results_paths_exist(results):
    assert missing_span_paths(results) == []  # code spans are relative to the repository
    assert missing_link_targets(results, RESULTS.parent) == []  # links, to docs/


def test_commands_name_existing_files(readme, results):
    assert missing_commands(readme) == []
    assert missing_commands(results) == []


def test_named_methods_exist(readme, results):
    assert missing_methods(readme) == []
    assert missing_methods(results) == []


def test_readme_is_short(readme):
    lines = readme.count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move the rest to docs/results.md"


def test_readme_has_one_figure_and_one_results_table(readme):
    figures = re.findall(r"!\[[^\]]*\]\([^)]+\)", FENCE.sub("", readme))
    assert len(figures) == 1, f"one figure in the README, found {figures}; the others go in docs/results.md"
    with_results = [table[0] for table in tables(readme) if any(re.search(r"\d%", row) for row in table)]
    assert len(with_results) <= 1, f"one table of results in the README, found {with_results}"


def test_readme_test_command_is_what_ci_runs(readme):
    assert readme_test_command(readme) == ci_command() == "pip install -r requirements-dev.txt && python -m pytest"


def test_readme_main_command(readme):
    assert "pip install -r requirements.txt && python dora_example.py" in readme


def test_the_checks_catch_a_wrong_name():
    """The checks fail on what they are for: a path, a link, a config, a module, a method."""
    text = ("`loradora/nope.py`, `configs/nope.yaml`, `nope.md`, [x](docs/figures/nope.png), "
            "[y](docs/results.md#nope), [z](docs/results.md#reference), "
            "`DoRALinear.nope`\n```bash\npython dora_example.py --config configs/nope.yaml\n"
            "python benchmarks/nope.py\npython -m loradora.nope\n```\n")
    assert missing_span_paths(text) == ["loradora/nope.py", "configs/nope.yaml", "nope.md"]
    assert missing_link_targets(text, REPO) == ["docs/figures/nope.png", "docs/results.md#nope"]
    assert missing_commands(text) == ["--config configs/nope.yaml", "python benchmarks/nope.py",
                                      "python -m loradora.nope"]
    assert missing_methods(text) == ["DoRALinear.nope"]
    fine = "`results/<run>/summary.json`, `data/MNIST/raw/`, `loss/batch`, `loss_curves.png`, `loradora/`"
    assert missing_span_paths(fine) == []


def test_the_layout_table_names_every_module_of_the_package():
    # Regression: per_image.py and regime_map.py were left out of the table for a release (issue 29).
    rows = [line.split("|")[1] for line in README.read_text().splitlines() if line.startswith("| `loradora/")]
    named = {name for row in rows for name in re.findall(r"`loradora/(\w+\.py)`", row)}
    assert named == {path.name for path in (REPO / "loradora").glob("*.py")}
