"""Data handling that depends only on core: reading users' files and public datasets as our records.

  fields     row field validators (every problem as `file:line: field: reason`)
  load       loaders for our own, TRL-shaped files: prompts, sft, preferences, rankings, text, responses
  hh         Anthropic HH-RLHF: preference transcripts and red-team attempts
  formats    public datasets recognised from their columns, a table of adapters by format and kind
  pku, ultrafeedback, beavertails   one module per public format
  risk       source category names -> LLaMA 2's three risk categories
  inspect    what `saferounds data validate` and `data convert` do
  sources    where the public datasets lie (../shared/data) and reading their columns
  dna        Do-Not-Answer: its rows, safety pairs and safe demonstrations
  public     the smollm2 preset's deterministic split of the public data
  synthetic  the demo's own seeded data;  tiny: the tiny preset's model and tokenizer
"""
