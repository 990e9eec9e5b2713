"""The `gptstore` command line: a Typer app, one module per noun."""
