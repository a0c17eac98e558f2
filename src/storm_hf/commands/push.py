"""`storm-hf push`: upload a saved, self-contained checkpoint folder to the Hub in one commit."""

from .common import existing_dir


def register_subcommand(commands) -> None:
    parser = commands.add_parser(
        "push",
        help="upload a checkpoint folder to the Hub",
        description="Upload a saved STORM checkpoint folder to the Hugging Face Hub in one commit, after checking "
        "that it loads without storm_hf (config auto_map + code, processor + chat template); "
        "writes a model card if it has none.",
    )
    parser.add_argument(
        "folder", type=existing_dir, help="checkpoint folder (from compose, convert or save_pretrained)"
    )
    parser.add_argument("repo_id", help="Hub repository, e.g. my-org/storm-7b")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit-message", default="Upload STORM checkpoint")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.set_defaults(run=run)


def run(args) -> None:
    from ..hub import push_folder

    commit = push_folder(
        args.folder,
        args.repo_id,
        private=args.private or None,
        token=args.token,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
    )
    print(f"pushed {args.folder} to {getattr(commit, 'commit_url', args.repo_id)}")
