"""`python -m eval.convert`: move checkpoints between this project and the outside world.

download-official fetch the 72 official `model_{i}.pt` files (resumable, checked, sha256 in manifest.json;
                 see eval/download.py), and with --import-to import them right away
import-official  official model-soups `model_{i}.pt` files (or open_clip checkpoints with a head)
                 -> project checkpoints `<out>/model_{i}.safetensors` (read with weights_only=True)
export-open-clip a project checkpoint -> a full open_clip state dict (its image tower, the text tower
                 of a pretrained CLIP), loadable by open_clip.create_model(arch, pretrained=FILE) and
                 clip_benchmark. The linear head is not part of open_clip's format and is left out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from eval.download import OFFICIAL_BASE_URL, OFFICIAL_COUNT, download_official, parse_models
from models.atomic import atomic_path
from models.checkpoint import OFFICIAL_SOURCE, CheckpointMeta, import_checkpoint, save_checkpoint, to_open_clip_state_dict
from models.classifier import ImageClassifier, embed_dim_of, first_mismatch, load_classifier
from models.cli import exit_code
from models.errors import UserError
from models.factory import activation_of, create_clip

IMAGENET_CLASSES = ("imagenet1k", 1000)


def official_files(sources: Sequence[str]) -> list[Path]:
    """Files as given; a folder contributes its `model_*.pt` (numeric order) or else its `*.pt`."""
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(
                path.glob("model_*.pt"), key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)]
            ) or sorted(path.glob("*.pt"))
            if not found:
                raise UserError(f"{path}: no model_*.pt or *.pt files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: not found")
    return files


def load_hparams(path: str | None) -> dict:
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"--hparams: cannot read {path} ({err})") from None


OFFICIAL_ARCH = "ViT-B-32-quickgelu"


OFFICIAL_LP_INIT = "model_0"  # the release's LP initialisation (its hparam_info.json: "LP initialization")


def official_kind(stem: str, model_hparams: dict | None) -> str:
    """'lp' for the release's LP init, 'individual' for its fine-tunes: from hparam_info.json when given,
    else from the file name (model_0 is the LP init), so the table never shows the init as a fine-tune."""
    if model_hparams is None:
        return "lp" if stem == OFFICIAL_LP_INIT else "individual"
    return "lp" if "LP" in str(model_hparams.get("info", "")) else "individual"


def import_official(
    sources: Sequence[str], out: Path, arch: str, pretrained: str | None, classes: str | None, hparams_file: str | None
) -> list[Path]:
    """Import each file, check it loads strictly into `arch`, and save it as `<out>/<stem>.safetensors`.

    The official checkpoints are fine-tunes of OpenAI's CLIP, so the tower is built with QuickGELU
    whatever `arch` says (`ViT-B-32` and `ViT-B-32-quickgelu` give the same model here).
    """
    files = official_files(sources)
    hparams = load_hparams(hparams_file)
    clip_model, _, _ = create_clip(arch, pretrained=None, activation="quick_gelu")
    templates: dict[int, ImageClassifier] = {}  # one architecture instance per head size, to check keys and shapes
    written = []
    for path in files:
        state, has_head = import_checkpoint(path)
        if not has_head:
            raise UserError(f"{path}: no classification head ('classification_head.*' or 'head.*'); export it with its head")
        rows = int(state["head.weight"].shape[0])
        class_list = classes or (IMAGENET_CLASSES[0] if rows == IMAGENET_CLASSES[1] else None)
        if class_list is None:
            raise UserError(f"{path}: head has {rows} classes; pass --classes to name the class list")
        if rows not in templates:
            templates[rows] = ImageClassifier(clip_model.visual, embed_dim_of(clip_model), rows)
        try:
            templates[rows].load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserError(f"{path}: weights do not fit architecture {arch} ({first_mismatch(err)}); pass the right --arch") from None
        model_hparams = hparams.get(path.stem, {})
        kind = official_kind(path.stem, model_hparams if hparams else None)
        meta = CheckpointMeta(
            arch,
            pretrained,
            rows,
            class_list,
            kind,
            hparams={**model_hparams, "imported_from": str(path), "source": OFFICIAL_SOURCE},
            activation=activation_of(clip_model.visual),  # QuickGELU for a ViT; None for a tower without (Quick)GELU
        )
        written.append(save_checkpoint(out / f"{path.stem}.safetensors", state, meta))
        print(f"{path} -> {written[-1]} ({kind}, {rows} classes)")
    return written


def export_open_clip(checkpoint: str, out: Path, text_tower: str | None) -> Path:
    """A full open_clip state dict: the checkpoint's image tower and `text_tower`'s text side."""
    classifier, meta = load_classifier(checkpoint)
    source = text_tower or meta.pretrained
    if not source:
        raise UserError(f"{checkpoint}: the checkpoint names no pretrained CLIP; pass --text-tower TAG_OR_FILE for the text tower")
    clip_model, _, _ = create_clip(meta.arch, pretrained=source, activation=meta.activation)
    full = to_open_clip_state_dict(classifier.state_dict(), clip_model.state_dict())
    with atomic_path(out) as tmp:
        if out.suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in full.items()}, str(tmp))
        else:
            torch.save(full, tmp)
    print(f"{checkpoint} -> {out} (open_clip {meta.arch}; text tower from {source})")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import-official", help="official model_{i}.pt files -> project checkpoints")
    imp.add_argument("sources", nargs="+", help="model_{i}.pt files or folders holding them")
    imp.add_argument("--out", required=True, type=Path, help="folder for <stem>.safetensors")
    imp.add_argument(
        "--arch", default=OFFICIAL_ARCH, help=f"open_clip architecture (default {OFFICIAL_ARCH}, the paper's); always built with QuickGELU"
    )
    imp.add_argument("--pretrained", default="openai", help="the pretrained tag the models started from (recorded in metadata)")
    imp.add_argument("--classes", default=None, help="class-list id (default imagenet1k for 1000-row heads)")
    imp.add_argument("--hparams", default=None, help="official hparam_info.json, to record each model's hyperparameters")
    dl = sub.add_parser("download-official", help="fetch the official model_{i}.pt files (resumable, checked)")
    dl.add_argument("--out", required=True, type=Path, help="folder for model_{i}.pt and manifest.json")
    dl.add_argument("--models", default=f"0-{OFFICIAL_COUNT - 1}", help="indices, e.g. 0-71 (default) or 0,5,10-12")
    dl.add_argument("--base-url", default=OFFICIAL_BASE_URL, help="where model_{i}.pt live (default: the official v0.0.2 release)")
    dl.add_argument("--verify", action="store_true", help="rehash every file against manifest.json; download again any that differ")
    dl.add_argument("--jobs", type=int, default=4, help="parallel downloads (default 4)")
    dl.add_argument("--retries", type=int, default=5, help="retries per request after transient errors, with backoff (default 5)")
    dl.add_argument("--import-to", default=None, type=Path, help="then import them as with import-official --out DIR")
    dl.add_argument("--arch", default=imp.get_default("arch"), help="for --import-to: as in import-official")
    dl.add_argument("--hparams", default=None, help="for --import-to: official hparam_info.json, as in import-official")
    dl.set_defaults(pretrained=imp.get_default("pretrained"), classes=None)
    exp = sub.add_parser("export-open-clip", help="project checkpoint -> full open_clip state dict")
    exp.add_argument("checkpoint", help="a project .safetensors checkpoint")
    exp.add_argument("--out", required=True, type=Path, help="output file (.pt, or .safetensors)")
    exp.add_argument("--text-tower", default=None, help="open_clip pretrained tag or file for the text tower (default: the checkpoint's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def command() -> None:
        if args.command == "download-official":
            files = download_official(args.out, parse_models(args.models), args.base_url, args.verify, args.jobs, args.retries)
            if args.import_to:
                import_official([str(f) for f in files], args.import_to, args.arch, args.pretrained, args.classes, args.hparams)
        elif args.command == "import-official":
            import_official(args.sources, args.out, args.arch, args.pretrained, args.classes, args.hparams)
        else:
            export_open_clip(args.checkpoint, args.out, args.text_tower)

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
