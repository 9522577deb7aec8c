"""The build stage: import, export, quality gate, bundle, package. Runs where torch is installed."""
