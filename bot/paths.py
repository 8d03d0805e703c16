"""Paths operators write in config.toml: relative ones are relative to the config file's folder."""

from __future__ import annotations

from pathlib import Path


def resolve_path(value: str | Path, base_dir: Path) -> Path:
    """`value` as an absolute path (`~` expanded), relative to `base_dir` when it is relative."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()
