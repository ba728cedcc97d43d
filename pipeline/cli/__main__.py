from saferounds.pipeline.cli import entry

entry()
