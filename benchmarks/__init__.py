"""The benchmarks: each a module run from the repository root (`python -m benchmarks.NAME`); results go to
reports/benchmarks/*.json and the page docs/benchmarks.md (`python -m benchmarks.docs_page`)."""
