"""The shell examples of the documentation are checked against the real command line.

Every fenced ```bash block of README.md and docs/**/*.md is read as a small shell script; each `stagekit ...`
command in it (after joining continuation lines, dropping comments, splitting on `&&`, `||`, `;`, `|`, and looking
inside `$(...)`) is parsed by the click parser of the real command, without running it:
- the subcommand (and a group's subcommand: `presets list`) must exist,
- every option must be one the command accepts, with a value where it needs one, and a value of its type,
- no argument may be missing or left over,
- `--preset NAME` must name a shipped preset for that command (a path ending in .toml is not checked),
- the options of one pipeline (`--label-key`, `--protein-emb`, ...) must apply to the phase that preset selects,
- `--set KEY=VALUE` must name a key of that phase's schema, with a value of the key's type.
Shell variables ("$DATA", $B, $(...)) are fine as values; their values are not checked.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer

from stagekit.cli import app
from stagekit.config.loader import parse_override, preset_path, read_preset
from stagekit.config.schema import check_value
from stagekit.errors import UserError
from stagekit.stages import registry

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = {"bash", "sh", "shell", "zsh"}


def doc_files() -> list[Path]:
    """README.md and every page under docs/ (new pages are picked up)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


# --- markdown ---------------------------------------------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


def shell_blocks(markdown: str) -> list[tuple[int, str]]:
    """(line number of the block's first line, text) of every fenced bash/sh/shell block."""
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        i += 1
        if opening is None:
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = (opening["info"].split() or [""])[0].lower()
        first, body = i + 1, []
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while i < len(lines) and not closing.match(lines[i]):
            line = lines[i]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))):])
            i += 1
        i += 1  # the closing fence
        if language in SHELL_LANGUAGES:
            blocks.append((first, "\n".join(body)))
    return blocks


# --- shell ------------------------------------------------------------------------------------------------------

@dataclass
class Word:
    text: str
    line: int
    splits: bool = False  # an unquoted $VAR, $(...) or glob: the shell may make it several words, or none


@dataclass
class _Lexer:
    """A small shell lexer: quotes, backslash escapes and continuations, comments, `$(...)` and backticks, `${...}`,
    `$((...))`, redirections and here-documents (dropped); every simple command, those inside substitutions too."""

    text: str
    line: int
    i: int = 0
    commands: list[list[Word]] = field(default_factory=list)
    heredocs: list[str] = field(default_factory=list)

    def peek(self, ahead: int = 0) -> str:
        return self.text[self.i + ahead] if self.i + ahead < len(self.text) else ""

    def take(self, n: int = 1) -> str:
        chunk = self.text[self.i:self.i + n]
        self.line += chunk.count("\n")
        self.i += n
        return chunk

    def balanced(self, opening: str, closing: str) -> str:
        """Text up to the `closing` that matches an `opening` already taken (for ${...} and $((...)))."""
        depth, start = 1, self.i
        while self.peek() and depth:
            char = self.take()
            depth += (char == opening) - (char == closing)
        return self.text[start:self.i]

    def substitution(self, closing: str) -> None:
        """The commands of a `$(...)` or backtick substitution whose opening was taken."""
        self.script(closing)
        self.take()  # the closing ) or `

    def skip_heredocs(self) -> None:
        """After a newline: skip the bodies of the here-documents opened on the line that ended."""
        for delimiter in self.heredocs:
            while self.peek():
                end = self.text.find("\n", self.i)
                end = len(self.text) if end < 0 else end
                body_line = self.take(end - self.i + 1)
                if body_line.strip() == delimiter:
                    break
        self.heredocs = []

    def script(self, closing: str = "") -> None:
        words: list[Word] = []
        parts: list[str] | None = None  # the word being read; None between words
        start, splits, redirect, depth = self.line, False, "", 0

        def end_word() -> None:
            nonlocal parts, splits, redirect
            if parts is not None:
                text = "".join(parts)
                if redirect == "<<":
                    self.heredocs.append(text)
                if not redirect:
                    words.append(Word(text, start, splits))
                redirect = ""
            parts, splits = None, False

        def end_command() -> None:
            nonlocal words
            end_word()
            if words:
                self.commands.append(words)
            words = []

        def begin() -> list[str]:
            nonlocal parts, start
            if parts is None:
                parts, start = [], self.line
            return parts

        while self.peek():
            char = self.peek()
            if closing and char == closing and (closing == "`" or depth == 0):
                break
            if char == "\\":
                self.take()
                escaped = self.take()
                if escaped != "\n":  # a continuation line joins the next one
                    begin().append(escaped)
            elif char in " \t":
                self.take()
                end_word()
            elif char == "\n":
                end_command()
                self.take()
                self.skip_heredocs()
            elif char == "#" and parts is None:
                while self.peek() and self.peek() != "\n":
                    self.take()
            elif char == "'":
                self.take()
                end = self.text.find("'", self.i)
                end = len(self.text) if end < 0 else end
                begin().append(self.take(end - self.i))
                self.take()
            elif char == '"':
                self.take()
                self.double_quoted(begin())
            elif char == "$" or char == "`":
                splits = True  # unquoted
                self.dollar(begin())
            elif char in "<>" or (char == "&" and self.peek(1) == ">"):
                if parts is not None and "".join(parts).isdigit():  # 2>, 1>
                    parts = None
                end_word()
                operator = self.take()
                while self.peek() in ("<", ">", "&", "|", "-") and len(operator) < 3:
                    operator += self.take()
                redirect = "<<" if operator in ("<<", "<<-") else "redirect"
            elif char in ";&|()":
                end_command()
                self.take()
                if char == "(":
                    depth += 1
                elif char == ")":
                    depth = max(depth - 1, 0)
            else:
                if char in "*?[":
                    splits = True  # a glob
                begin().append(self.take())
        end_command()

    def double_quoted(self, parts: list[str]) -> None:
        while self.peek() and self.peek() != '"':
            char = self.peek()
            if char == "\\" and self.peek(1) in ('"', "\\", "$", "`", "\n"):
                self.take()
                escaped = self.take()
                if escaped != "\n":
                    parts.append(escaped)
            elif char in "$`":
                self.dollar(parts)
            else:
                parts.append(self.take())
        self.take()

    def dollar(self, parts: list[str]) -> None:
        """$(...), `...`, $((...)), ${...} or $NAME: a placeholder that starts with $ (its value is unknown)."""
        if self.peek() == "`":
            self.take()
            self.substitution("`")
            parts.append("$(...)")
        elif self.peek(1) == "(" and self.peek(2) == "(":
            self.take(3)
            parts.append("$((" + self.balanced("(", ")"))
        elif self.peek(1) == "(":
            self.take(2)
            self.substitution(")")
            parts.append("$(...)")
        elif self.peek(1) == "{":
            self.take(2)
            parts.append("${" + self.balanced("{", "}"))
        else:
            parts.append(self.take())


def shell_commands(script: str, first_line: int = 1) -> list[list[Word]]:
    """The simple commands of a shell script, each a list of words with their line numbers."""
    lexer = _Lexer(script, first_line)
    lexer.script()
    return lexer.commands


ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")
PREFIXES = {"!", "{", "}", "if", "then", "else", "elif", "do", "while", "until", "time", "exec", "command", "nohup"}


def stagekit_arguments(words: list[Word]) -> list[Word] | None:
    """The arguments of a `stagekit` (or `python -m stagekit`) command; None for any other command."""
    i = 0
    while i < len(words) and (words[i].text in PREFIXES or ASSIGNMENT.match(words[i].text)):
        i += 1  # `X=1 stagekit ...`, `do stagekit ...`; a bare `X=$(...)` is checked as its own inner command
    names = [w.text for w in words[i:i + 3]]
    if names[:1] and names[0].rsplit("/", 1)[-1] == "stagekit":
        return words[i + 1:]
    if names[:1] and re.fullmatch(r"(.*/)?python[0-9.]*", names[0]) and names[1:3] == ["-m", "stagekit"]:
        return words[i + 3:]
    return None


# --- the check --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    line: int
    token: str
    message: str


def _dynamic(value: object) -> bool:
    """A value holding a shell expansion: not checked."""
    values = value if isinstance(value, list | tuple) else [value]
    return any(isinstance(v, str) and ("$" in v or "`" in v) for v in values)


def _param(command, flag: str):
    return next((p for p in command.params if flag in getattr(p, "opts", ()) + getattr(p, "secondary_opts", ())),
                None)


class Checker:
    def __init__(self) -> None:
        self.root = typer.main.get_command(app)

    def check(self, args: list[Word], line: int) -> list[Problem]:
        """Problems of `stagekit ARGS` (line: where the command starts)."""
        command, ctx, path, rest = self.root, None, ["stagekit"], list(args)
        while True:
            ctx = command.context_class(command, info_name=path[-1], parent=ctx)
            problems, opts, positional = self.parse(command, ctx, rest, " ".join(path), line)
            if opts is None:  # the parser gave up
                return problems
            if not hasattr(command, "commands"):  # a command, not a group
                break
            if not positional or opts.get("help"):
                return problems  # a group without a subcommand shows its help
            name = positional[0]
            sub = command.get_command(ctx, name.text)
            if sub is None:
                known = command.list_commands(ctx)
                close = difflib.get_close_matches(name.text, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f"; it has {', '.join(known)}"
                return [Problem(name.line, name.text, f"`{' '.join(path)}` has no command '{name.text}'{hint}")]
            command, path = sub, [*path, name.text]
            rest = rest[rest.index(name) + 1:]
        if opts.get("help") or (not rest and command.no_args_is_help):
            return problems
        if not problems:  # the value of an unknown option would count as an argument
            problems += self.arguments(command, ctx, opts, positional, rest, " ".join(path), line)
        problems += self.values(command, ctx, opts, rest, line)
        name = path[-1] if len(path) == 2 else ""
        if name and registry.of_command(name) and _param(command, "--preset") is not None:
            problems += self.phase(command, name, opts, rest, line)
        argument = next((p for p in command.params if p.param_type_name == "argument"), None)
        shown = opts.get(argument.name) if argument is not None and path[1:] == ["presets", "show"] else None
        if isinstance(shown, str) and not _dynamic(shown):
            problems += self.preset_exists(shown, (_locate(rest, shown) or Word(shown, line)).line, "")
        return problems

    def parse(self, command, ctx, args: list[Word], where: str, line: int):
        """Click's own parser of the command (no type conversion, no callbacks): every unknown option is reported,
        then the rest is parsed without it. Returns (problems, {param name: raw value} or None where the parser
        gave up, the positional words it left over)."""
        problems, args = [], list(args)
        while True:
            try:
                opts, positional, _ = command.make_parser(ctx).parse_args(args=[w.text for w in args])
            except click_exceptions.NoSuchOption as exc:
                word = _locate(args, exc.option_name)
                hint = f" (did you mean {', '.join(exc.possibilities)}?)" if exc.possibilities else ""
                problems.append(Problem(word.line if word else line, exc.option_name,
                                        f"`{where}` has no option {exc.option_name}{hint}"))
                if word is None:
                    return problems, None, []
                args.remove(word)
                continue
            except click_exceptions.UsageError as exc:  # an option without its value
                token = getattr(exc, "option_name", "") or where
                word = _locate(args, token)
                problems.append(Problem(word.line if word else line, token, exc.format_message()))
                return problems, None, []
            break
        # the parser keeps the leftover positional words as text: map them back to words, in order
        words, remaining = [], iter(w for w in args if not w.text.startswith("-") or w.text == "-")
        for text in positional:
            words.append(next((w for w in remaining if w.text == text), Word(text, line)))
        return problems, opts, words

    def arguments(self, command, ctx, opts, leftover: list[Word], args: list[Word], where: str,
                  line: int) -> list[Problem]:
        """Missing or extra arguments; not checked where a word may expand to several or none."""
        if any(w.splits for w in args):
            return []
        problems = [Problem(w.line, w.text, f"`{where}` takes no further argument '{w.text}'") for w in leftover]
        for param in command.params:
            if param.param_type_name == "argument" and param.required and opts.get(param.name) in (None, (), []):
                problems.append(Problem(line, param.name.upper(), f"`{where}` needs the argument "
                                                                  f"{param.name.upper()}"))
        return problems

    def values(self, command, ctx, opts, args: list[Word], line: int) -> list[Problem]:
        """Each value converted by its parameter's type (paths are not looked up; shell expansions not checked)."""
        problems = []
        for param in command.params:
            value = opts.get(param.name)
            if value is None or param.callback is not None or _dynamic(value):
                continue  # a missing argument is reported by `arguments`
            try:
                param.process_value(ctx, value)
            except click_exceptions.UsageError as exc:
                flags = [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]
                word = next((w for f in flags if (w := _locate(args, f))), None)
                problems.append(Problem(word.line if word else line, word.text if word else param.name,
                                        f"{exc.format_message()} (given {value!r})"))
        return problems

    def phase(self, command, name: str, opts, args: list[Word], line: int) -> list[Problem]:
        """The preset must be one for this command; the pipeline options and --set keys, of its phase."""
        preset_param, set_param, resume = (_param(command, flag) for flag in ("--preset", "--set", "--resume"))
        preset = opts.get(preset_param.name)
        word = _value_word(args, preset_param, preset) if preset else None
        if resume is not None and resume.name in opts:  # continues with the configuration stored in the bundle
            if preset is None or preset == preset_param.default:
                return []
            return [Problem(word.line if word else line, preset, "--resume continues a run with its stored "
                                                                 "configuration; drop --preset")]
        if preset is None:
            preset = preset_param.default if isinstance(preset_param.default, str) else None
            if preset is None:
                return [Problem(line, f"stagekit {name}", "needs --preset NAME (this command has no default preset; "
                                                          "see `stagekit presets list`)")]
        if _dynamic(preset) or preset.endswith(".toml"):
            return []
        problems = self.preset_exists(preset, word.line if word else line, name)
        if problems:
            return problems
        model = read_preset(name, preset).model
        try:
            spec = registry.phase(name, model)
        except UserError as exc:
            return [Problem(word.line if word else line, preset, str(exc))]
        own, foreign = {o.name for o in spec.options}, {}
        for other in registry.of_command(name):  # options of the other pipelines of this command
            for option in other.options:
                if option.name in opts and option.name not in own:
                    foreign.setdefault(option.flags, []).append(f"'{other.model}'")
        for flags, models in foreign.items():
            flag = _locate(args, flags)
            problems.append(Problem(flag.line if flag else line, flags,
                                    f"{flags} does not apply to `stagekit {name} --preset {preset}` (model "
                                    f"'{model}'); it is for model {', '.join(models)}"))
        for text in opts.get(set_param.name) or []:
            problems += self.override(text, spec, preset, _locate(args, text) or Word(text, line))
        return problems

    @staticmethod
    def preset_exists(name: str, line: int, command: str) -> list[Problem]:
        """A shipped preset (for `stagekit COMMAND`, where given)."""
        try:
            if command:
                read_preset(command, name)
            else:
                preset_path(name)
        except UserError as exc:
            return [Problem(line, name, str(exc))]
        return []

    @staticmethod
    def override(text: str, spec, preset: str, word: Word) -> list[Problem]:
        try:
            dotted, value = parse_override(text)
        except UserError as exc:
            return [Problem(word.line, text, str(exc))]
        if _dynamic(dotted):
            return []
        section, _, key = dotted.partition(".")
        found = spec.schema.get(section, {}).get(key) if "." not in key else None
        if found is None:
            keys = [f"{s}.{k}" for s, ks in spec.schema.items() for k in ks]
            close = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"its sections: {', '.join(spec.schema)}"
            return [Problem(word.line, text, f"--set: preset '{preset}' (`{spec.command}` for model '{spec.model}') "
                                             f"has no key '{dotted}'; {hint}")]
        if _dynamic(text.partition("=")[2]):
            return []
        try:
            check_value(dotted, found, value, "--set")
        except ValueError as exc:
            return [Problem(word.line, text, str(exc))]
        return []


def _locate(args: list[Word], token: str) -> Word | None:
    """The word of an option (--flag, --flag=VALUE, a -xy cluster) or of a value."""
    exact = next((w for w in args if w.text == token or w.text.startswith(token + "=")), None)
    exact = exact or next((w for w in args if w.text.endswith("=" + token)), None)  # --set=KEY=VALUE
    if exact is not None or not re.fullmatch(r"-[^-]", token):
        return exact
    return next((w for w in args if re.fullmatch(rf"-[^-]*{re.escape(token[1])}.*", w.text)), None)


def _value_word(args: list[Word], param, value: str) -> Word | None:
    for i, word in enumerate(args):
        for flag in param.opts:
            if word.text == f"{flag}={value}" or (word.text == flag and i + 1 < len(args)
                                                   and args[i + 1].text == value):
                return args[i + 1] if word.text == flag else word
    return next((w for w in args if w.text == value), None)


@functools.cache
def checker() -> Checker:
    return Checker()


def check_script(script: str, first_line: int = 1) -> tuple[int, list[Problem]]:
    """(number of stagekit commands, their problems) of a shell script."""
    count, problems = 0, []
    for words in shell_commands(script, first_line):
        args = stagekit_arguments(words)
        if args is not None:
            count += 1
            problems += checker().check(args, words[0].line)
    return count, problems


def check_markdown(path: Path) -> tuple[int, list[str]]:
    """(number of stagekit commands, "FILE:LINE: TOKEN: problem" lines) of a markdown file."""
    name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    count, report = 0, []
    for first, block in shell_blocks(path.read_text()):
        found, problems = check_script(block, first)
        count += found
        report += [f"{name}:{p.line}: {p.token}: {p.message}" for p in problems]
    return count, report


# --- tests ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documented_commands_parse(page: Path):
    _, report = check_markdown(page)
    assert not report, f"{len(report)} problem(s) in the shell examples of {page.name}:\n" + "\n".join(report)


def test_readme_examples_are_found():
    count, _ = check_markdown(ROOT / "README.md")
    assert count >= 20, f"only {count} stagekit commands found in README.md's bash blocks: is the extraction broken?"


def problems_of(script: str) -> list[Problem]:
    count, problems = check_script(script)
    assert count >= 1, "no stagekit command found"
    return problems


@pytest.mark.parametrize("script", [
    'stagekit pretrain --preset vae "$DATA" --label-key cluster_id -o run/vae.stk',
    "stagekit pretrain -p vae data.h5ad --set training.epochs=5 --set=model.n_latent=12 -qo run/vae.stk",
    "stagekit finetune --preset mean-teacher run/s1.stk --labelled-fraction 0.1 -o run/s2.stk",  # NAME.finetune
    "stagekit cluster-search run/vae.stk --set cluster.seed=3 -o c.stk",  # the command's default preset
    "stagekit evaluate run/E.stk -o run/E_report/ --no-umap",
    "stagekit presets list && stagekit presets show dec | head -3",
    "stagekit --help; stagekit pretrain --help; python -m stagekit info x.stk --json",
    "stagekit pretrain --preset my/own.toml --set anything.goes=1 d.h5ad -o x.stk",  # a preset file: not checked
    "stagekit finetune --resume run/s2.stk.partial run/s1.stk --set training.epochs=3 -o run/s2.stk",
])
def test_checker_passes_good_commands(script: str):
    assert problems_of(script) == []


@pytest.mark.parametrize(("script", "token", "words"), [
    ("stagekit pretrain --preset vae d.h5ad --label-keyy cluster_id -o x.stk", "--label-keyy", "--label-key"),
    ("stagekit pretrain --preset vea d.h5ad -o x.stk", "vea", "did you mean 'vae'"),
    ("stagekit pretrain --preset=vea d.h5ad -o x.stk", "vea", "did you mean 'vae'"),
    ("stagekit finetune --preset vae p.stk -o x.stk", "vae", "not `stagekit finetune`"),
    ("stagekit pretrain --preset vae d.h5ad --set training.epoch=3 -o x.stk", "training.epoch=3", "training.epochs"),
    ("stagekit pretrain --preset vae d.h5ad --set training.epochs=many -o x.stk", "training.epochs=many",
     "integer"),
    ("stagekit pretrain --preset vae d.h5ad --protein-emb h=e.h5 -o x.stk", "--protein-emb", "saturn"),
    ("stagekit pretrian --preset vae d.h5ad -o x.stk", "pretrian", "pretrain"),
    ("stagekit presets shwo vae", "shwo", "show"),
    ("stagekit presets show no-such-preset", "no-such-preset", "no preset named"),
    ("stagekit cluster-search run/vae.stk --set cluster.nope=1 -o c.stk", "cluster.nope=1", "no key"),
    ("stagekit finetune run/s1.stk -o x.stk", "stagekit finetune", "--preset"),
    ("stagekit info a.stk b.stk", "b.stk", "no further argument"),
    ("stagekit finetune --preset dec --resume r.stk.partial p.stk -o x.stk", "dec", "drop --preset"),
    ("stagekit pretrain --preset transition d.h5ad --label-key x -o x.stk", "--label-key", "'vae', 'saturn'"),
    ("stagekit finetune --preset dec -o x.stk", "PARENT", "needs the argument"),
    ("stagekit pretrain --preset vae d.h5ad --seed abc -o x.stk", "--seed", "'abc'"),
    ("stagekit pretrain --preset vae d.h5ad -o", "-o", "requires an argument"),
])
def test_checker_reports_bad_commands(script: str, token: str, words: str):
    problems = problems_of(script)
    assert [p.token for p in problems] == [token], problems
    assert words in problems[0].message


def test_checker_reports_every_problem_with_its_line():
    script = ("set -euo pipefail\n"
              "stagekit pretrain --preset vae d.h5ad \\\n"
              "    --label-keyy x --batch-keyy b -o x.stk   # two typos on line 3\n"
              "mkdir -p run\n"
              'B=$(stagekit finetune --preset dec "$A" --nope -o run/dec.stk)\n')
    count, problems = check_script(script, first_line=10)
    assert count == 2
    assert [(p.line, p.token) for p in problems] == [(12, "--label-keyy"), (12, "--batch-keyy"), (14, "--nope")]
    _, problems = check_script("stagekit pretrain --preset vae d.h5ad --label-keyy x --set training.epoch=1 -o x.stk")
    assert [p.token for p in problems] == ["--label-keyy", "training.epoch=1"]


def test_shell_lexer():
    script = ("# stagekit nope in a comment\n"
              "DATA=../data.h5ad   # an assignment\n"
              "OTHERS=$(python -c \"print('stagekit --no-such-flag'\n"
              "print(1)\")\n"
              "python - <<'EOF'\n"
              "stagekit inside a here-document\n"
              "EOF\n"
              "stagekit info \"$(stagekit pretrain --preset vae `ls *.h5ad` -o 'a b.stk')\" 2>&1 >/dev/null | tail\n"
              "for b in run/*.stk; do stagekit info \"$b\"; done\n")
    commands = [[w.text for w in c] for c in shell_commands(script)]
    assert commands == [
        ["DATA=../data.h5ad"],
        ["python", "-c", "print('stagekit --no-such-flag'\nprint(1)"],
        ["OTHERS=$(...)"],
        ["python", "-"],
        ["ls", "*.h5ad"],
        ["stagekit", "pretrain", "--preset", "vae", "$(...)", "-o", "a b.stk"],
        ["stagekit", "info", "$(...)"],
        ["tail"],
        ["for", "b", "in", "run/*.stk"],
        ["do", "stagekit", "info", "$b"],
        ["done"],
    ]
    assert [stagekit_arguments(c) is not None for c in shell_commands(script)] == [
        False, False, False, False, False, True, True, False, False, True, False]


def test_shell_blocks():
    markdown = ("text\n```bash\nstagekit info a.stk\n```\n\n```python\nstagekit = 1\n```\n"
                "- item\n\n  ```sh\n  stagekit info b.stk\n  ```\n")
    assert shell_blocks(markdown) == [(3, "stagekit info a.stk"), (12, "stagekit info b.stk")]
