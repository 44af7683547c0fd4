"""One module per `syncd` subcommand; each exposes `register(subparsers)` and sets `func`."""
