"""`gptstore models ...`: list, show, pull, import, export, rm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markdown import Markdown
from rich.table import Table

from gptstore.cli.common import console, human_size, id_column, open_catalog, print_json

app = typer.Typer(help="Browse and manage the models in the store.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
OwnerOpt = Annotated[str | None, typer.Option(
    "--owner", help="The user or organisation that owns the model's namespace (it must "
    "not belong to another account).")]
VisibilityOpt = Annotated[str, typer.Option(
    help="Who may read the model: private (its owner), org (the owner's organisations) "
         "or public.")]


def terminal_safe(text: str) -> str:
    """A card is written by whoever published the model: its control characters (escape
    sequences could rewrite the terminal) are dropped before it is printed."""
    import unicodedata

    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")


def claim_owner(catalog: Any, name: str, owner: str | None) -> None:
    """Give the namespace of `name` to the account `owner` before a model is made."""
    if owner is None:
        return
    from gptstore.accounts.store import AccountStore
    from gptstore.catalog.names import parse_ref

    account = AccountStore(catalog.db).get(owner)
    catalog.claim_namespace(parse_ref(name).namespace, account.id)


def audit(catalog: Any, action: str, target: str, detail: dict[str, Any] | None = None
          ) -> None:
    from gptstore.accounts.audit import record
    from gptstore.cli.accounts import cli_actor

    record(catalog.db, cli_actor(), action, target, detail)


@app.command("list")
def list_models(
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    search: Annotated[str | None, typer.Option(help="Substring of name or description.")] = None,
    sort: Annotated[str, typer.Option(
        help="name, updated, downloads, likes, trending, rating or newest.")] = "name",
    as_json: JsonFlag = False,
) -> None:
    """List the models in the store (every page of the catalog's listing)."""
    with open_catalog() as catalog:
        models = catalog.list_models(task=task, search=search, sort=sort)
    if as_json:
        print_json([m.to_dict() for m in models])
        return
    if not models and (task or search):
        console.print("No models match.")
        return
    if not models:
        console.print("No models yet: `gptstore models pull HuggingFaceTB/SmolLM2-135M-Instruct`")
        return
    table = Table(id_column("name", [m.name for m in models]), "task", "latest", "kind",
                  "size", "updated")
    for m in models:
        latest = m.latest
        table.add_row(m.name, m.task, str(latest.number) if latest else "-",
                      latest.kind if latest else "-", human_size(latest.size) if latest else "-",
                      m.updated_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="namespace/name or namespace/name@VERSION.")],
    as_json: JsonFlag = False,
) -> None:
    """Show a model: card, versions, files and lineage."""
    with open_catalog() as catalog:
        model = catalog.get_model(name)
        version = catalog.resolve(name)
        card = catalog.card(version)
    if as_json:
        doc = model.to_dict()
        doc["card"] = card
        doc["selected_version"] = version.number
        print_json(doc)
        return
    body = card.split("\n---\n", 1)[-1] if card.startswith("---") else card
    console.print(Markdown(terminal_safe(body)))
    versions = Table("version", "kind", "base", "size", "created", title="versions")
    for v in model.versions:
        versions.add_row(str(v.number), v.kind, v.base or "", human_size(v.size),
                         v.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(versions)
    files = Table("path", "size", "digest", title=f"files of {version.ref}")
    for f in version.files:
        files.add_row(f.path, human_size(f.size), f.digest[:19] + "…")
    console.print(files)


@app.command()
def pull(name: Annotated[str, typer.Argument(help="namespace/name, e.g. "
                                             "HuggingFaceTB/SmolLM2-135M-Instruct.")],
         owner: OwnerOpt = None, visibility: VisibilityOpt = "public") -> None:
    """Bring a model into the store (the built-in one works offline)."""
    from gptstore.catalog.importers import pull as do_pull
    from gptstore.catalog.repository import check_visibility

    check_visibility(visibility)
    with open_catalog() as catalog, console.status(f"pulling {name}…"):
        claim_owner(catalog, name, owner)
        version = do_pull(catalog, name, visibility=visibility)
        audit(catalog, "create", version.model, {"version": version.number, "how": "pull",
                                                  "visibility": visibility})
    console.print(f"pulled [bold]{version.ref}[/] ({human_size(version.size)})")


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A Hugging Face model folder or a .gguf file.")],
    name: Annotated[str, typer.Option("--name", help="namespace/name in the store.")],
    description: Annotated[str, typer.Option(help="One-paragraph description.")] = "",
    license: Annotated[str | None, typer.Option(help="License id, e.g. apache-2.0.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable).")] = None,
    owner: OwnerOpt = None,
    visibility: VisibilityOpt = "public",
) -> None:
    """Import a local model folder or GGUF file."""
    from gptstore.catalog.importers import import_path
    from gptstore.catalog.repository import check_visibility

    check_visibility(visibility)
    with open_catalog() as catalog, console.status(f"importing {path}…"):
        claim_owner(catalog, name, owner)
        version = import_path(catalog, path, name, description=description, license=license,
                              tags=tag or [], visibility=visibility)
        audit(catalog, "create", version.model, {"version": version.number, "how": "import",
                                                  "visibility": visibility})
    console.print(f"imported [bold]{version.ref}[/] ({human_size(version.size)})")


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="namespace/name[@VERSION].")],
    directory: Annotated[Path, typer.Argument(help="New or empty folder to write.")],
    merged: Annotated[bool, typer.Option(help="Adapters: write a merged full model.")] = False,
) -> None:
    """Write a model as a Hugging Face folder (loads with from_pretrained)."""
    with open_catalog() as catalog:
        version = catalog.resolve(name)
        if version.kind == "adapter" and merged:
            from gptstore.inference.loader import export_merged

            export_merged(catalog, version, directory)
        else:
            catalog.export(version.ref, directory)
        audit(catalog, "download", version.ref, {"to": str(directory), "merged": merged})
    console.print(f"exported [bold]{version.ref}[/] to {directory}")


@app.command()
def rm(
    name: Annotated[str, typer.Argument(help="namespace/name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Remove a model and all its versions (blobs are freed by `gptstore gc`)."""
    if not yes and not typer.confirm(f"Remove {name} and all its versions?"):
        raise typer.Abort()
    with open_catalog() as catalog:
        info = catalog.delete_model(name)
        audit(catalog, "delete", info.name, {"versions": len(info.versions)})
    count = len(info.versions)
    console.print(f"removed [bold]{info.name}[/] ({count} version{'' if count == 1 else 's'})")


@app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="namespace/name.")],
    visibility: Annotated[str, typer.Option(
        help="private (its owner), org (the owner's organisations) or public.")],
) -> None:
    """Change a model's settings (its visibility)."""
    with open_catalog() as catalog:
        before = catalog.get_model(name).visibility
        info = catalog.set_visibility(name, visibility)
        audit(catalog, "visibility", info.name, {"from": before, "to": visibility})
    console.print(f"{info.name} is now {visibility}")
