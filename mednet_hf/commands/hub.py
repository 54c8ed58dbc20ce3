"""`mednet push` and `mednet hub install-bundled`: a saved MedNet to the Hub, the bundled checkpoints to the cache."""

from dataclasses import dataclass, field
from pathlib import Path

from . import Command


@dataclass
class PushArguments:
    model: str = field(metadata={"help": "a saved MedNet folder (e.g. a finetune run's best/)"})
    repo_id: str = field(metadata={"help": "the model repository, e.g. you/mednet-pneumonia"})
    card: str | None = field(default=None, metadata={"help": "README.md to use (default: the folder's README.md, else one written from its run record)"})
    private: bool = field(default=False, metadata={"help": "create the repository private"})
    revision: str | None = field(default=None, metadata={"help": "branch to push to (created if needed)"})
    message: str = field(default="Upload MedNet (mednet_hf)", metadata={"help": "commit message"})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: HF_TOKEN or the saved login)"})


def push(args: PushArguments) -> None:
    from ..hub import default_model_card, push_model

    folder = Path(args.model)
    card_path = Path(args.card) if args.card else folder / "README.md"
    card = card_path.read_text() if card_path.is_file() else default_model_card(folder, args.repo_id)
    commit = push_model(folder, args.repo_id, card, private=args.private, token=args.token, revision=args.revision,
                        commit_message=args.message)
    print(f"pushed {folder} to {args.repo_id}{f'@{args.revision}' if args.revision else ''}: {commit.oid}")


@dataclass
class InstallBundledArguments:
    force: bool = field(default=False, metadata={"help": "replace what the cache holds for them"})


def install_bundled(args: InstallBundledArguments) -> None:
    from huggingface_hub.constants import HF_HUB_CACHE

    from ..bundled import install_bundled as install

    written = install(force=args.force)
    for repo_id, snapshot in written.items():
        print(f"{repo_id} -> {snapshot}")
    if not written:
        print(f"already installed in {HF_HUB_CACHE} (--force replaces them)")


COMMANDS = [
    Command("push", "push a saved MedNet (safetensors, processor, remote code) and its model card to the Hub",
            PushArguments, push),
    Command("hub install-bundled", "place mednet/gray and mednet/color in the Hugging Face cache (offline use)",
            InstallBundledArguments, install_bundled),
]
