"""What the `linearizer` subcommands run: train, sample, eval, fetch-weights."""
