def main() -> None:
    from simplematch.cli.app import app

    app()
