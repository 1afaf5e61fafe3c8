"""`synthlearn node …`: the hospital admin's commands. Registration only."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run inside a hospital: ingest DICOMs, train, generate, audit, export.",
                  no_args_is_help=True)

# One module per command; add a line here when a command works.
from node.commands import inspect  # noqa: E402

app.command("inspect")(inspect.command)
from node.commands import make_phantoms, preprocess  # noqa: E402

app.command("make-phantoms")(make_phantoms.command)
app.command("preprocess")(preprocess.command)
from node.commands import import_npz, import_png  # noqa: E402

app.command("import-npz")(import_npz.command)
app.command("import-png")(import_png.command)
from node.commands import baseline, evaluate  # noqa: E402

app.command("baseline")(baseline.command)
app.command("evaluate")(evaluate.command)
from node.commands import audit, export, keygen  # noqa: E402

app.command("keygen")(keygen.command)
app.command("audit")(audit.command)
app.command("export")(export.command)
from node.commands import join  # noqa: E402

app.command("join")(join.command)
from node.commands import generate, train  # noqa: E402

app.command("train")(train.command)
app.command("generate")(generate.command)
