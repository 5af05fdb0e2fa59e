"""Renderers: rich tables, Markdown, HTML and plots of reports, benchmarks, comparisons and builds.
They format; they compute nothing."""
