"""The operations console: a separate process serving pages and a JSON API over the same Redis."""
