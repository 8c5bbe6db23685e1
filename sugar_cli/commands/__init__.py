"""One module per `sugar` command: each adds its own parser (`add_parser(sub)`) and sets its
entry point, which takes the parsed arguments."""
