"""Feedback that becomes reward-model training data: LLM judges (judges), AI preference labels
(labeling, RLAIF) and human rankings of K samples (annotation)."""
