"""canvasd: a self-hosted OpenAI Images API server.

Commands: serve | settings | generate | train | eval | bench. Bad input is one line on stderr and
exit code 2."""

from __future__ import annotations


from canvasd.cli.bench import bench
from canvasd.cli.common import new_app
from canvasd.cli.generate import generate
from canvasd.cli.options import settings_options
from canvasd.cli.serve import serve, show_settings
from canvasd.cli.training import eval_app, train_app

# Model and engine settings that shape a local generation; the server-only ones (host, keys,
# URLs, queue) would mean nothing to `generate`.
GENERATE_SETTINGS = ("models", "aliases", "compat", "precision", "torch_threads", "render_threads", "max_batch")

app = new_app(__doc__, no_args_is_help=True)
app.command()(serve)
app.command("settings")(show_settings)
app.command()(settings_options(*GENERATE_SETTINGS)(generate))
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.command()(bench)


def main() -> None:  # console script entry
    app(prog_name="canvasd")


if __name__ == "__main__":
    main()
