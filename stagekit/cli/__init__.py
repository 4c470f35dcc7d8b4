"""The `stagekit` command. Each subcommand lives in its own module and imports heavy code only when run."""

from __future__ import annotations

import sys
import traceback

import typer

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions

from stagekit.errors import Interrupted, TrainingStopped, UserError

app = typer.Typer(name="stagekit", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Staged training of single-cell and spatial-omics models. One phase per command; "
                       "each writes a self-describing .stk bundle the next phase reads.")


def _register() -> None:
    from stagekit.cli import (
        align,
        cluster_search,
        demo,
        evaluate,
        extract,
        finetune,
        info,
        presets,
        pretrain,
        segment,
        unfreeze,
    )

    app.command("pretrain", no_args_is_help=True)(pretrain.pretrain)
    app.command("cluster-search", no_args_is_help=True)(cluster_search.cluster_search)
    app.command("finetune", no_args_is_help=True)(finetune.finetune)
    app.command("unfreeze", no_args_is_help=True)(unfreeze.unfreeze)
    app.command("segment", no_args_is_help=True)(segment.segment)
    app.command("extract", no_args_is_help=True)(extract.extract)
    app.command("align", no_args_is_help=True)(align.align)
    app.command("evaluate", no_args_is_help=True)(evaluate.evaluate)
    app.command("info", no_args_is_help=True)(info.info)
    app.add_typer(presets.app, name="presets")
    app.command("demo", help=demo.help_text())(demo.demo)


_register()


def _fail(message: str, code: int) -> None:
    print(f"stagekit: error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: maps outcomes to exit codes (0 ok, 2 user error, 1 internal error, 130 interrupted)."""
    try:
        code = app(args=argv, standalone_mode=False)
    except (UserError, TrainingStopped) as exc:
        _fail(str(exc), 2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click_exceptions.ClickException as exc:  # usage errors: unknown option, missing argument
        exc.show(file=sys.stderr)
        sys.exit(2)
    except Interrupted as exc:
        print(f"stagekit: {exc}", file=sys.stderr)
        sys.exit(130)
    except (KeyboardInterrupt, typer.Abort):
        print("stagekit: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        _fail("internal error (the traceback above); please report it", 1)
    sys.exit(code if isinstance(code, int) else 0)
