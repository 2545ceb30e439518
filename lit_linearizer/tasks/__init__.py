"""What the `linearizer` subcommands run (train, sample, eval, style), and what they read for a model."""
