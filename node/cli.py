"""`synthlearn node …`: the hospital admin's commands. Registration only.

Commands are listed in the order a site admin meets them (DESIGN §1's flow); each lives in
its own module under ``node/commands/``.
"""

from __future__ import annotations

import typer

from node.commands import (
    audit,
    baseline,
    evaluate,
    export,
    generate,
    import_npz,
    import_png,
    inspect,
    join,
    keygen,
    make_phantoms,
    preprocess,
    reader_study,
    train,
    train_patches,
)

app = typer.Typer(help="Run inside a hospital: ingest DICOMs, train, generate, audit, export.",
                  no_args_is_help=True, rich_markup_mode=None)

for _name, _mod in (
    ("make-phantoms", make_phantoms),
    ("preprocess", preprocess),
    ("inspect", inspect),
    ("import-npz", import_npz),
    ("import-png", import_png),
    ("baseline", baseline),
    ("train", train),
    ("train-patches", train_patches),
    ("generate", generate),
    ("audit", audit),
    ("reader-study", reader_study),
    ("keygen", keygen),
    ("export", export),
    ("evaluate", evaluate),
    ("join", join),
):
    app.command(_name)(_mod.command)
