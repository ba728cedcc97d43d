"""The records passed between stages, as TypedDicts (they stay plain dicts, so every JSONL/JSON file
keeps its shape), and the label vocabularies every layer shares.

Who writes what:
  Prompt           data.load.load_prompts                            -> sampling, ppo, label
  PreferencePair   data.load.load_preferences, reward_models.feedback (AI labels, rankings)
                                                                      -> reward_models.training
  Ranking          data.load.load_rankings, reward_models.feedback.annotation
  Sample           sampling.generate (+ sampling.scoring)            -> versions/vN/samples.jsonl
  SelectedRow      sampling.rejection.selected_row                   -> versions/vN/selected.jsonl
  EvalRecord       eval.evaluate.judge_records                       -> eval/records.json
  Rate             eval.metrics.rate_with_ci; WinRate eval.metrics.win_rate (blocks of metrics.json,
                   whose full schema is eval.report.METRICS_SCHEMA_DOC)
"""
from __future__ import annotations

import re
from typing import Literal, Optional, TypedDict

try:
    from typing import NotRequired
except ImportError:  # Python 3.10
    from typing_extensions import NotRequired

# LLaMA 2 Sec. 3.2.1: how much better the chosen response is (strongest first).
RATINGS = ("significantly_better", "better", "slightly_better", "negligibly_better", "unsure")
# LLaMA 2's 3-way safety label, plus the case it drops from safety-RM training (chosen unsafe, rejected safe).
SAFETY_LABELS = ("chosen_safe_rejected_unsafe", "both_safe", "both_unsafe", "chosen_unsafe_rejected_safe")
# The two reward models; a preference pair's `source` names the one it trains.
RM_KINDS = ("helpfulness", "safety")
# reward_models/gold_helpfulness/vN: the gold helpfulness RM (reward_models.gold), never in a round's rm_paths
GOLD_RM_KIND = "gold_helpfulness"

Message = TypedDict("Message", {"role": str, "content": str})


class Prompt(TypedDict):
    id: str
    messages: list[Message]           # chat turns ending with a user turn
    is_safety: bool                   # tagged as possibly eliciting unsafe answers (the gate's is_safety)
    category: Optional[str]
    reference: Optional[str]          # a reference answer, when the file has one


class PreferencePair(TypedDict, total=False):
    prompt: list[Message]
    chosen: str
    rejected: str
    rating: Optional[str]             # one of RATINGS
    margin: Optional[float]           # overrides the rating's Table 27 margin
    safety_label: Optional[str]       # one of SAFETY_LABELS
    source: str                       # one of RM_KINDS
    origin: str                       # the data set it came from (hh-helpful, do-not-answer, ...): per-origin RM accuracy
    chosen_safe: bool                 # per-response safety (AI labels, demo data)
    rejected_safe: bool


class Ranking(TypedDict):
    prompt: list[Message]
    responses: list[str]              # K responses
    ranking: list[int]                # indices into responses, best first
    source: str


class Sample(TypedDict, total=False):
    """One of the K samples of a prompt (samples.jsonl); the scores are added by sampling.scoring."""
    prompt_id: str
    sample_index: int
    messages: list[Message]
    is_safety: bool
    category: Optional[str]
    response: str
    num_tokens: int
    finish_reason: Literal["eos", "length"]
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    origin_version: int               # the round that sampled it
    helpfulness: float                # raw RM scores (logits)
    safety: float
    safety_sigmoid: float
    gate_branch: Literal["safety", "helpfulness"]
    gated_logit: float                # logit(R_c), not whitened
    gated_score: float                # R~ = whiten(logit(R_c)) over the samples scored together
    judge_score: Optional[float]      # the LLM judge's score in [0, 1] (reward: judge)


class SelectedRow(TypedDict, total=False):
    """A selected.jsonl row: SFT-shaped (messages + completion) plus where it came from and its scores."""
    prompt_id: str
    messages: list[Message]
    completion: str
    origin_version: int
    sample_index: int
    selected_in: int
    score: float                      # the selection key's value (gated_score or judge_score)
    is_safety: bool
    category: Optional[str]
    helpfulness: float
    safety: float
    safety_sigmoid: float
    gate_branch: str
    gated_logit: float
    gated_score: float
    judge_score: Optional[float]


class EvalRecord(TypedDict):
    """One answer of a version to one suite prompt, with its verdicts (eval/records.json)."""
    id: str
    suite: str
    role: Literal["unsafe", "borderline", "helpful"]
    category: Optional[str]
    risk_category: Optional[str]
    prompt: str
    messages: list[Message]
    response: str
    refusal: bool
    refusal_match: Optional[str]
    helpfulness_score: Optional[float]
    safety_score: Optional[float]
    safety_prob: Optional[float]
    llm_safety: Optional[float]
    violation: Optional[bool]         # unsafe prompts only
    false_refusal: Optional[bool]     # borderline and helpful prompts only
    reference_overlap: Optional[float]
    # present when the learned judges ran (eval/judges/): their probabilities and who decided
    refusal_p: NotRequired[Optional[float]]
    refusal_patterns: NotRequired[bool]
    refusal_classifier: NotRequired[Optional[bool]]
    harmful: NotRequired[Optional[bool]]
    harmful_p: NotRequired[Optional[float]]
    judge: NotRequired[str]


class Rate(TypedDict):
    """A rate with its Wilson 95% interval (RATE in metrics.json)."""
    rate: float
    n: int
    count: int
    ci95: list[float]


class WinRate(TypedDict):
    """Pairwise wins of A over B; ties count half (WIN in metrics.json)."""
    rate: float
    wins: int
    ties: int
    losses: int
    n: int


def normalise_prompt(text: str) -> str:
    """The key under which two prompts are the same prompt: lower case, each run of whitespace one space.
    The public-data split (data.public) and the judges' exclusion of eval prompts
    (eval.judges.training.without_prompts) compare prompts by it."""
    return re.sub(r"\s+", " ", text or "").strip().lower()
