"""The round's stages, one module each, in the order a version runs them (pipeline.config.STAGE_ORDER).

Each module has `run(ctx: pipeline.rounds.StageContext) -> dict` (the metrics the manifest keeps) whose
body reads as the numbered steps of its docstring. A new stage: a module here, a row in STAGES, its
name in pipeline.config.STAGE_ORDER / StageName, and (if it makes a policy) in rounds.POLICY_OUTPUTS.
"""
from __future__ import annotations

from saferounds.pipeline.stages import distill, eval, label, ppo, rm, rs

STAGES = {
    "rm": rm.run,        # train the helpfulness and safety reward models (LLaMA 2 Sec. 3.2.2)
    "label": label.run,  # an LLM judge labels pairs of samples (RLAIF) for the next round's RMs
    "distill": distill.run,  # safety context distillation: fine-tune on preprompted answers (Sec. 4.2.4)
    "rs": rs.run,        # best-of-K rejection sampling, then fine-tune (Sec. 3.2.3)
    "ppo": ppo.run,      # PPO on the gated reward with a KL penalty (Sec. 3.2.3, Eq. 4)
    "eval": eval.run,    # safety and helpfulness evaluation, report (Sec. 4.4)
}
