"""One module per ``sage-bench`` subcommand; each defines ``add_parser(subparsers)``.

Handlers import their heavy dependencies lazily so that ``sage-bench --help`` stays fast.
"""
