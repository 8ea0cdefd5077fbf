"""Every shell command of ``README.md``, run as written.

The README's ```` ```bash ```` blocks are run in the order they appear, each
with ``bash -euo pipefail`` on its own (shell variables do not carry over
from one block to the next: each block sets what it uses), all in one fresh
temporary directory (the repositories an earlier block made are there for
the later ones), with the environment of the test process as
``scripts/bootstrap.sh`` sets it up: ``CPCOMBINED_DIR``,
``DAF_BUTLER_CONFIG_PATH`` with the package's ``config/``, and ``PATH``
with the virtual environment's ``bin`` first, so that ``cpcombined``,
``pipetask`` and ``butler`` are the project's (set here when missing).

HTML comments on the lines directly above a block's opening fence direct the
test:

``<!-- readme-test: skip: REASON -->``
    The block is not run; REASON says why and must not be empty.
``<!-- readme-test: replica PATH [INSTRUMENT] -->``
    The block works in a repository populated by the Science Pipelines at
    PATH (e.g. ``/repo/LATISS``): the test builds a replica of one
    (`upstream_replica.build_replica`: obs_lsst's records, raws ingested
    as obs_base ingests them, cp_pipe-layout calibrations certified under
    ``<INSTRUMENT>/calib``) in the temporary directory and runs the block
    with PATH replaced by the replica's path.
``<!-- readme-test: expect: TEXT -->``
    The block's standard output must contain TEXT.

The blocks find their exposure ids themselves (the ids ``cpcombined
simulate`` printed, or ``butler query-dimension-records``), so nothing else
is substituted.  ```` ```text ````
blocks are never run, and shell code must be fenced as ``bash`` (``sh``,
``shell``, ``console``... fences are refused, so that no command escapes
the test).  A failing block is named by its line in ``README.md``, with its
exit code and the tail of its standard error.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Fence languages that hold shell code: only ``bash`` is allowed (and run).
SHELL_LANGUAGES = {"sh", "shell", "console", "zsh", "bash-session", "shell-session"}
#: Directives the test understands.
DIRECTIVE_RE = re.compile(r"^<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
#: Longest a single block may take (seconds).
BLOCK_TIMEOUT = 600
#: Lines of standard error shown for a failing block.
STDERR_TAIL = 40


@dataclasses.dataclass
class Block:
    """A fenced code block of the README."""

    line: int  # 1-based line of the opening fence
    language: str
    text: str
    skip: str | None = None  # the reason, when skipped
    replica: tuple[str, str] | None = None  # (path in the block, instrument)
    expect: list[str] = dataclasses.field(default_factory=list)
    directives: list[str] = dataclasses.field(default_factory=list)


def parse_readme(path: Path = README) -> list[Block]:
    """The fenced code blocks of a Markdown file with their directives.

    Raises
    ------
    ValueError
        A fence is not closed, or a directive is not understood.
    """
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(`{3,})\s*([\w+-]*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        ticks, language = fence.group(1), fence.group(2).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^{ticks}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{path.name} line {start + 1}: code block never closed")
        block = Block(start + 1, language, "\n".join(body) + "\n")
        j = start - 1
        while j >= 0 and DIRECTIVE_RE.match(lines[j]):
            block.directives.insert(0, DIRECTIVE_RE.match(lines[j]).group("body"))
            j -= 1
        for directive in block.directives:
            _apply(block, directive, path)
        blocks.append(block)
        i += 1
    return blocks


def _apply(block: Block, directive: str, path: Path) -> None:
    where = f"{path.name} line {block.line}"
    keyword, _, rest = directive.partition(" ")
    if keyword.rstrip(":") == "skip":
        reason = directive.split(":", 1)[1].strip() if ":" in directive else ""
        block.skip = reason
    elif keyword == "replica":
        words = rest.split()
        if not 1 <= len(words) <= 2:
            raise ValueError(f"{where}: 'replica' takes PATH [INSTRUMENT], got {rest!r}")
        block.replica = (words[0], words[1] if len(words) == 2 else "LATISS")
    elif keyword.rstrip(":") == "expect":
        text = directive.split(":", 1)[1].strip() if ":" in directive else ""
        if not text:
            raise ValueError(f"{where}: 'expect:' needs the text to find")
        block.expect.append(text)
    else:
        raise ValueError(f"{where}: unknown readme-test directive {directive!r}")


def readme_environment() -> dict[str, str]:
    """The test process's environment, completed as ``scripts/bootstrap.sh``
    would complete it."""
    env = dict(os.environ)
    env.setdefault("CPCOMBINED_DIR", str(ROOT))
    config = str(ROOT / "config")
    paths = [p for p in env.get("DAF_BUTLER_CONFIG_PATH", "").split(os.pathsep) if p]
    if config not in paths:
        env["DAF_BUTLER_CONFIG_PATH"] = os.pathsep.join([config, *paths])
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    return env


def test_readme_blocks_are_marked() -> None:
    """Every shell block is ``bash`` and either run or skipped with a
    reason; the two set-up commands are not run again (``run_tests.sh``
    would start this test again); the README describes the package that
    is there: every subcommand of ``cpcombined`` is shown, and the names of
    the package's own dataset types are the pipelines' (no stale name such
    as ``cpBiasProc``)."""
    blocks = parse_readme()
    shell = [b for b in blocks if b.language in SHELL_LANGUAGES]
    assert not shell, [f"line {b.line}: fence it as bash (run) or text (not run)" for b in shell]
    bash = [b for b in blocks if b.language == "bash"]
    for block in bash:
        if block.skip is not None:
            assert block.skip, f"README.md line {block.line}: a skipped block must say why"
    setup = [b for b in bash if "scripts/run_tests.sh" in b.text or "scripts/run_daily.sh" in b.text]
    assert setup and all(b.skip for b in setup), [b.line for b in setup]
    assert len([b for b in bash if b.skip is None]) >= 5
    text = README.read_text()
    assert "../shared" not in text and "SPEC.md" not in text

    from lsst.cpcombined.cli.main import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    for name in subparsers.choices:
        assert f"`cpcombined {name}" in text, f"the README does not show `cpcombined {name}`"
    assert not re.search(r"\bcp(Bias|Dark|Flat|Isr)Proc\b", text), "stale intermediate name (now cpc*Proc)"
    sources = [*(ROOT / "pipelines" / "_ingredients").glob("*.yaml"),
               *(ROOT / "python" / "lsst" / "cpcombined" / "tasks").glob("*.py")]  # fmt: skip
    defined = "\n".join(p.read_text() for p in sources)
    ours = set(re.findall(r"\bcpc[A-Z]\w*", text)) - {"cpcVerify"}  # cpcVerify<T>Decision
    unknown = {n for n in ours if n not in defined}
    assert not unknown, f"dataset types in the README that no pipeline or task defines: {sorted(unknown)}"


def run_blocks(blocks: list[Block], tmp_path: Path, source: str = "README.md") -> list[tuple[int, float]]:
    """Run the ``bash`` blocks that are not skipped, in order, in
    ``tmp_path / "work"``; fail naming the first block that fails (its line
    in ``source``, exit code, standard error tail) or does not print what
    it is expected to.  Returns (line, seconds) of each block run."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = readme_environment()
    replicas: dict[tuple[str, str], Path] = {}
    timings = []
    for block in blocks:
        if block.language != "bash" or block.skip is not None:
            continue
        script = block.text
        if block.replica is not None:
            if block.replica not in replicas:
                from upstream_replica import build_replica

                name = re.sub(r"\W+", "_", block.replica[0]).strip("_")
                replicas[block.replica] = build_replica(
                    tmp_path / f"replica_{name}", instrument=block.replica[1]
                ).root
            script = script.replace(block.replica[0], str(replicas[block.replica]))
        where = f"{source} line {block.line}"
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
            )
        except subprocess.TimeoutExpired as err:
            pytest.fail(
                f"{where}: still running after {BLOCK_TIMEOUT} s\n{block.text}"
                f"--- stderr (tail) ---\n{_tail(err.stderr)}"
            )
        seconds = time.monotonic() - t0
        timings.append((block.line, seconds))
        if proc.returncode != 0:
            pytest.fail(
                f"{where}: exit code {proc.returncode} after {seconds:.0f} s\n{block.text}"
                f"--- stderr (last {STDERR_TAIL} lines) ---\n{_tail(proc.stderr)}\n"
                f"--- stdout (tail) ---\n{_tail(proc.stdout, 15)}"
            )
        for text in block.expect:
            assert text in proc.stdout, f"{where}: {text!r} not in the output\n{_tail(proc.stdout)}"
    return timings


def test_directives_and_failures_are_reported(tmp_path: Path) -> None:
    """The directives are read from the lines above a fence; a block that
    fails is named by its line with its standard error; a block run after
    an earlier one sees the files it wrote."""
    md = tmp_path / "sample.md"
    md.write_text(
        "text\n"
        "<!-- readme-test: skip: needs a camera -->\n"
        "```bash\nexit 3\n```\n"
        "<!-- readme-test: skip -->\n"
        "```bash\nexit 4\n```\n"
        "<!-- readme-test: expect: hello -->\n"
        "```bash\necho hello > greeting.txt; cat greeting.txt\n```\n"
        "```text\nnot run\n```\n"
        "```bash\ncat greeting.txt\necho broken >&2\nfalse\n```\n"
    )
    blocks = parse_readme(md)
    assert [(b.line, b.language, b.skip, b.expect) for b in blocks] == [
        (3, "bash", "needs a camera", []),
        (7, "bash", "", []),
        (11, "bash", None, ["hello"]),
        (14, "text", None, []),
        (17, "bash", None, []),
    ]
    with pytest.raises(pytest.fail.Exception, match=r"(?s)sample.md line 17: exit code 1 .*broken"):
        run_blocks([b for b in blocks if b.skip is None], tmp_path, source=md.name)
    md.write_text("<!-- readme-test: replcia /repo/X -->\n```bash\ntrue\n```\n")
    with pytest.raises(ValueError, match="unknown readme-test directive"):
        parse_readme(md)


def test_readme_bash_blocks_run(tmp_path: Path) -> None:
    """Run every ``bash`` block of the README that is not skipped, in order,
    in a fresh directory, and check the output each block is expected to
    print.  Replicas of Science Pipelines repositories stand in for the
    repositories the README names."""
    timings = run_blocks(parse_readme(), tmp_path)
    assert timings
    print("README blocks (line: seconds):", ", ".join(f"{line}: {s:.1f}" for line, s in timings))


def _tail(text: str | bytes | None, n: int = STDERR_TAIL) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.splitlines()[-n:])
