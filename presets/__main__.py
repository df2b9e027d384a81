"""``python -m presets``: list, download, verify and check the model configuration; plan a request.

Exit codes: 0 success; 1 verify found a mismatch or a download could not run here;
2 the configuration is invalid (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from presets.active import resolve_active
from presets.errors import ConfigError, PresetsError
from presets.files import DownloadUnavailable, FileStatus, download_model, verify_model
from presets.registry import Registry, load_registry
from presets.roles import MODES
from presets.settings import Settings, load_settings
from presets.validation import validate_active


def _settings_error(exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "settings"
    return ConfigError(f"INFERENCE_{field.upper()}: {first['msg']}")


def _load_settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        raise _settings_error(exc) from None


def _registry(models_dir: Path | None) -> Registry:
    settings = _load_settings()
    return load_registry(
        models_dir=models_dir or settings.models_dir,
        model_roles_override=settings.model_roles,
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)) for row in [headers, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _cmd_list(args: argparse.Namespace) -> int:
    registry = _registry(args.models_dir)
    model_rows = [
        [
            spec.model_id,
            ",".join(spec.roles),
            str(spec.size_mb),
            str(registry.context_length(spec.model_id)),
            str(spec.memory_mb),
            spec.source.repo_id or f"pypi:{spec.source.package}",
        ]
        for spec in registry.models.values()
    ]
    print(_table(["MODEL", "ROLES", "SIZE_MB", "CONTEXT", "MEMORY_MB", "SOURCE"], model_rows))
    print()
    preset_rows = [
        [
            preset.name,
            preset.mode,
            " + ".join(preset.models),
            ", ".join(f"{step}={model}" for step, model in preset.steps.items()) or "-",
            preset.note,
        ]
        for preset in registry.presets.values()
    ]
    print(_table(["PRESET", "MODE", "MODELS", "STEPS", "NOTE"], preset_rows))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    registry = _registry(args.models_dir)
    try:
        paths = download_model(registry, args.model_id)
    except DownloadUnavailable as exc:
        print(f"cannot download {args.model_id} from here; run:\n  {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    registry = _registry(args.models_dir)
    model_ids = args.model_ids or list(registry.model_ids())
    checks = [
        check for model_id in model_ids for check in verify_model(registry, model_id, use_cache=not args.no_cache)
    ]
    rows = [[c.model_id, c.status.value, str(c.path), c.detail] for c in checks]
    print(_table(["MODEL", "STATUS", "FILE", "DETAIL"], rows))
    return 1 if any(c.status is FileStatus.MISMATCH for c in checks) else 0


def _cmd_check(args: argparse.Namespace) -> int:
    settings = _load_settings()
    registry = load_registry(models_dir=settings.models_dir, model_roles_override=settings.model_roles)
    active = resolve_active(registry, settings)
    validate_active(active, registry, check_files=not args.no_files)
    steps = ", ".join(f"{step}={model}" for step, model in active.steps.items()) or "-"
    print(f"OK config={active.config} mode={active.mode} models={','.join(active.models)} steps={steps}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    # Imported here: orchestration builds on presets, and the other commands need none of it.
    from orchestration.errors import NotEnoughModels, UnknownMode
    from orchestration.preview import preview_dag

    settings = _load_settings()
    registry = load_registry(models_dir=settings.models_dir, model_roles_override=settings.model_roles)
    active = resolve_active(registry, settings.model_copy(update={"config": args.preset}))
    validate_active(active, registry, check_files=False)
    try:
        preview = preview_dag(active, settings=settings, mode=args.mode, task_type=args.task_type)
    except (NotEnoughModels, UnknownMode) as exc:
        raise ConfigError(str(exc)) from None
    plan = preview.plan
    print(f"preset {active.config}  mode {plan.mode}  models {', '.join(active.models)}")
    for step, model in plan.cast.steps.items():
        print(f"  {step}: {model}")
    if plan.cast.participants:
        print(f"  participants ({len(plan.cast.participants)}): {', '.join(plan.cast.participants)}")
    if plan.cast.stages:
        print(f"  stages: {' -> '.join(plan.cast.stages)}")
    rounds = f"max rounds {preview.max_rounds}" if preview.max_rounds is not None else "one pass"
    print(f"  {rounds}; first: {', '.join(preview.first)}")
    if preview.early_exit:
        print(f"  longest path shown; {preview.early_exit}")
    print()
    rows = [
        [step.name, step.model, ", ".join(step.after) or "-", "yes" if step.streamed else ""] for step in preview.steps
    ]
    print(_table(["STEP", "MODEL", "AFTER", "STREAMED"], rows))
    print()
    print(f"models_used: {', '.join(preview.models_used)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m presets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    models_dir_help = "model directory (default: INFERENCE_MODELS_DIR)"

    listing = sub.add_parser("list", help="list models and presets")
    listing.add_argument("--models-dir", type=Path, default=None, help=models_dir_help)
    listing.set_defaults(handler=_cmd_list)

    download = sub.add_parser("download", help="download one model into the model directory")
    download.add_argument("model_id")
    download.add_argument("--models-dir", type=Path, default=None, help=models_dir_help)
    download.set_defaults(handler=_cmd_download)

    verify = sub.add_parser("verify", help="sha256-check model files (all models by default)")
    verify.add_argument("model_ids", nargs="*")
    verify.add_argument("--models-dir", type=Path, default=None, help=models_dir_help)
    verify.add_argument("--no-cache", action="store_true", help="rehash even if the checksum cache matches")
    verify.set_defaults(handler=_cmd_verify)

    check = sub.add_parser("check", help="validate the active configuration from INFERENCE_* settings")
    check.add_argument("--no-files", action="store_true", help="skip the model file checks")
    check.set_defaults(handler=_cmd_check)

    plan = sub.add_parser("plan", help="print the DAG of steps a request would run; loads nothing")
    plan.add_argument("preset")
    plan.add_argument("--mode", choices=MODES, default=None, help="orchestration mode (default: the preset's)")
    plan.add_argument("--task-type", default=None, help="the request's task_type (changes critique generators)")
    plan.set_defaults(handler=_cmd_plan)

    envfile = sub.add_parser("envfile", help="print .env.example: every INFERENCE_* setting, its default, its meaning")
    envfile.set_defaults(handler=_cmd_envfile)
    return parser


def _cmd_envfile(args: argparse.Namespace) -> int:
    from presets.envfile import render

    print(render(), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (PresetsError, OSError) as exc:
        # ConfigError, unknown model/preset, unreadable files: one line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
