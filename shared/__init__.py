"""Code that both a hospital node and the coordinator import: the protocol between them,
Flower process control, signing, the bundle format, the downstream CNN, metrics and typed
configuration. Nothing here imports ``node`` or ``coordinator``.

``__version__`` has one source, ``[project] version`` in pyproject.toml (Flower reads that
field too): the installed distribution's metadata, else the pyproject.toml beside the
packages (a Flower app folder or a bare source tree).
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synthlearn")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()
